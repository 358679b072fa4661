"""KV-cache export of decoders: logits and greedy-decode parity, optimum generate, failure numbers."""

from __future__ import annotations

import json

import pytest

from compress.core.errors import CompressError


def test_export_parity_and_optimum_generate(llama, llama_onnx):
    from optimum.onnxruntime import ORTModelForCausalLM

    from compress.runtime.causal import CausalRunner

    p = llama_onnx.parity
    assert p.max_abs_diff < 1e-4 and p.greedy_identical == p.greedy_prompts == 8 and p.greedy_new_tokens == 32
    folder = llama_onnx.model.folder
    manifest = json.loads((folder / "compress_model.json").read_text())
    assert manifest["task"] == "text-generation" and "past_key_values.0.key" in manifest["input_names"]
    ort_model = ORTModelForCausalLM.from_pretrained(folder)
    ids = llama.tokenizer("the movie was", return_tensors="pt")
    out = ort_model.generate(**ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    ours = CausalRunner(llama).greedy(ids["input_ids"].numpy(), 6)
    assert out[0, ids["input_ids"].shape[1]:].tolist() == ours[0].tolist()


@pytest.mark.parametrize("name", ["tiny:gpt2"])
def test_gpt2_exports_too(name, tmp_path):
    from compress.export.causal import export_causal
    from compress.models.load import load_model

    result = export_causal(load_model(name), tmp_path / "g")
    assert result.parity.ok(1e-4)


def test_export_over_tolerance_fails_with_numbers(llama, tmp_path):
    from compress.export.causal import export_causal

    with pytest.raises(CompressError, match=r"max \|Δlogits\| .* greedy decode identical on 8 of 8"):
        export_causal(llama, tmp_path / "o", atol=1e-12)
    assert not (tmp_path / "o").exists()  # nothing half-written

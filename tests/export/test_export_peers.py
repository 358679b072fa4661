"""Export for the peer runtimes: llama.cpp's converter and quantizer, onnxruntime-genai's model builder.

Each test needs its extra (`compress[llamacpp]`, `compress[genai]`) and skips cleanly without it; the
missing-extra errors are tested with the import lookup patched, so they run everywhere."""

from __future__ import annotations

import importlib.util
import json

import pytest

from compress.core.errors import CompressError


def _sharpened_tiny_llama(folder, seed: int = 0):
    """tiny:llama with larger random weights, so its next-token distributions are peaked (the default init gives
    near-uniform logits and greedy decoding repeats one token)."""
    import torch

    from compress.models.load import load_model

    model = load_model("tiny:llama")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.module.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5, generator=gen)
    model.save(folder)
    return model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("peers") / "tiny-llama"
    _sharpened_tiny_llama(folder)
    return folder


def _hide(monkeypatch, *modules):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))


def test_missing_extras_are_one_line_errors(monkeypatch, tmp_path):
    from compress.export.peers import quantize_gguf, to_genai, to_gguf

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    _hide(monkeypatch, "llama_cpp", "onnxruntime_genai")
    for call, pip in [(lambda: to_gguf(tmp_path, tmp_path / "o.gguf"), "pip install 'compress[llamacpp]'"),
                      (lambda: quantize_gguf(tmp_path / "m.gguf", tmp_path / "q.gguf"), "compress[llamacpp]"),
                      (lambda: to_genai(tmp_path, tmp_path / "g"), "pip install 'compress[genai]'")]:
        with pytest.raises(CompressError) as e:
            call()
        assert "\n" not in str(e.value) and pip in str(e.value)


def test_bad_arguments_fail_before_any_tool_runs(tmp_path):
    from compress.export.peers import quantize_gguf, to_genai, to_gguf

    with pytest.raises(CompressError, match="outtype"):
        to_gguf(tmp_path, tmp_path / "o.gguf", outtype="q4_0")
    with pytest.raises(CompressError, match="no config.json"):
        to_gguf(tmp_path, tmp_path / "o.gguf")
    with pytest.raises(CompressError, match="not found"):
        quantize_gguf(tmp_path / "missing.gguf", tmp_path / "q.gguf")
    with pytest.raises(CompressError, match="precision"):
        to_genai(tmp_path, tmp_path / "g", precision="int2")


def test_gguf_conversion_and_quantization(tiny_folder, tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("sentencepiece")
    gguf = pytest.importorskip("gguf")
    from compress.export.peers import quantize_gguf, to_gguf

    # The tiny model's byte-level BPE is trained in code: llama.cpp's converter does not know its pre-tokenizer
    # hash, so name the one it matches (GPT-2's byte-level split).
    f32 = to_gguf(tiny_folder, tmp_path / "tiny-f32.gguf", "f32", pre_tokenizer="gpt-2")
    reader = gguf.GGUFReader(f32)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    per_layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    expected = {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.{n}.weight" for i in (0, 1) for n in per_layer}
    assert expected <= set(types) and set(types.values()) == {"F32"}
    q8 = quantize_gguf(f32, tmp_path / "tiny-q8_0.gguf", "Q8_0")
    assert {t.tensor_type.name for t in gguf.GGUFReader(q8).tensors if t.name.startswith("blk.")} >= {"Q8_0"}
    assert q8.stat().st_size < f32.stat().st_size
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_unknown_pre_tokenizer_is_one_line_error(tiny_folder, tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("sentencepiece")
    from compress.export.peers import to_gguf

    with pytest.raises(CompressError, match="pre_tokenizer=") as e:
        to_gguf(tiny_folder, tmp_path / "x.gguf")
    assert "\n" not in str(e.value) and not (tmp_path / "x.gguf").exists()


def test_genai_builder_int4(tmp_path):
    pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("onnx_ir")
    import onnx

    from compress.export.peers import to_genai

    # onnxruntime's CPU GroupQueryAttention needs a head size that is a multiple of 16: tiny:llama's is 8, so
    # the builder's output is checked on a 64-wide copy (head size 16) of the same architecture.
    folder = _wide_tiny_llama(tmp_path / "tiny-llama-64")
    out = to_genai(folder, tmp_path / "genai-int4", "int4")
    config = json.loads((out / "genai_config.json").read_text())
    assert config["model"]["type"] == "llama" and config["model"]["decoder"]["num_key_value_heads"] == 2
    graph = onnx.load(out / "model.onnx", load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert "GroupQueryAttention" in ops and ops.count("MatMulNBits") >= 2 * 4 + 1  # qkv, o, gate/up, down + head
    bits = {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    assert bits == {4, 8}  # int4 layers, 8-bit output head (rtn_last)


def _wide_tiny_llama(folder, seed: int = 0):
    import copy

    import torch
    from transformers import LlamaForCausalLM

    from compress.models.artifacts import TorchModel
    from compress.models.load import load_model

    base = load_model("tiny:llama")
    config = copy.deepcopy(base.module.config)
    config.hidden_size, config.intermediate_size, config.head_dim = 64, 128, 16
    torch.manual_seed(seed)
    module = LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5, generator=gen)
    TorchModel(module, base.task, tokenizer=base.tokenizer, source="tiny:llama-64").save(folder)
    return folder

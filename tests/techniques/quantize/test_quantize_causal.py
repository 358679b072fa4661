"""Decoder int8/int4 weight-only quantization: structure, numeric contract, head precision, the budget search."""

from __future__ import annotations

import json

import pytest

from compress.core.errors import CompressError


def _quantize(model, out, **kw):
    from compress.passes.quantize import QuantizeOrtConfig
    from compress.techniques.quantize.causal import quantize_causal

    return quantize_causal(model, out, QuantizeOrtConfig(**kw))


def _kl(model, reference, blocks) -> float:
    from compress.evaluation.causal import evaluate_causal

    return evaluate_causal(model, blocks, reference=reference)["kl"]


def test_int8_and_int4_structure_and_contract(llama_onnx, blocks, tmp_path):
    """Numeric contract, from a measurement on tiny:llama (random weights, 6 blocks of 32 tokens): KL to fp32 was
    ~1e-6 for int8 and ~2e-5 for int4 block 32; the bounds leave 10x room and still catch a broken quantizer
    (a wrong scale or zero point gives KL > 0.1 on these logits)."""
    import onnx

    fp32 = llama_onnx.model
    int8 = _quantize(fp32, tmp_path / "q8", mode="dynamic")
    int4 = _quantize(fp32, tmp_path / "q4", mode="int4", block_size=32)
    # The fused graph's head already owns the tied weight (the embedding Gather reads its transpose): nothing to untie
    assert int8.metrics["quantized_matmuls"] == 11 and int8.metrics["untied_head"] == []
    nodes = {n.name: n for n in onnx.load(str(int4.model.path)).graph.node if n.op_type == "MatMulNBits"}
    assert len(nodes) == 11  # 5 per layer of the fused graph (packed QKV, o, gate, up, down) x 2 layers + the head
    attrs = {n: {a.name: a.i for a in node.attribute} for n, node in nodes.items()}
    head = next(a for n, a in attrs.items() if "lm_head" in n)
    assert head["bits"] == 8 and all(a["bits"] == 4 for n, a in attrs.items() if "lm_head" not in n)
    assert all(a["block_size"] == 32 and a["accuracy_level"] == 4 for a in attrs.values())
    assert _kl(int8.model, fp32, blocks) < 1e-4
    assert _kl(int4.model, fp32, blocks) < 5e-4
    settings = json.loads((tmp_path / "q4" / "quantization.json").read_text())
    assert settings["resolved"]["head_bits"] == 8 and settings["resolved"]["block_size"] == 32


def test_head_fp32_and_block_128(llama_onnx, tmp_path):
    import onnx

    r = _quantize(llama_onnx.model, tmp_path / "q", mode="int4", block_size=128, head="fp32")
    names = [n.name for n in onnx.load(str(r.model.path)).graph.node if n.op_type == "MatMulNBits"]
    assert len(names) == 10 and not any("lm_head" in n for n in names)


def test_budget_search_keeps_sensitive_units_fp32(llama_onnx, tmp_path):
    from compress.data.examples import sample_texts

    r = _quantize_with_texts(llama_onnx.model, tmp_path / "q2", sample_texts() * 6)
    m = r.metrics
    assert len(m["sensitivity"]) == 3  # layer.0, layer.1, lm_head
    assert 1 <= len(m["kept_units"]) <= 2 and m["excluded_nodes"] >= 1 and m["fallback"] == "8-bit"
    assert m["kl"] == min(s["kl"] for s in m["search"])  # the published model is the best step
    assert m["kl"] < m["search"][0]["kl"]  # moving the worst units to 8 bits reduced the error


def _quantize_with_texts(model, out, texts):
    from compress.passes.quantize import QuantizeOrtConfig
    from compress.techniques.quantize.causal import quantize_causal

    cfg = QuantizeOrtConfig(mode="int4", max_drop=0.0, budget_metric="kl", block_tokens=32, eval_samples=4,
                            max_excluded_units=2)
    return quantize_causal(model, out, cfg, eval_texts=texts)


def test_max_drop_needs_text(llama_onnx, tmp_path):
    with pytest.raises(CompressError, match="needs held-out text"):
        _quantize(llama_onnx.model, tmp_path / "q", mode="int4", max_drop=0.01)


def test_interrupted_budget_search_leaves_the_best_model_so_far(llama_onnx, tmp_path, monkeypatch):
    from compress.data.examples import sample_texts
    from compress.models.load import load_model
    from compress.techniques.quantize import causal as qc

    real, calls = qc._Scorer.__call__, {"n": 0}

    def interrupted(self, path):
        calls["n"] += 1
        if calls["n"] > 3:  # all-int4, then two sensitivity rows: Ctrl-C
            raise KeyboardInterrupt
        return real(self, path)

    monkeypatch.setattr(qc._Scorer, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _quantize_with_texts(llama_onnx.model, tmp_path / "q", sample_texts() * 6)
    settings = json.loads((tmp_path / "q" / "quantization.json").read_text())
    assert settings["partial"] is True and settings["search_step"] == 0
    assert load_model(tmp_path / "q").task == "text-generation"  # a usable model, in place


@pytest.mark.parametrize("algorithm", ["hqq"])  # k_quant needs K divisible by the block (tiny:llama has K=16)
def test_int4_algorithms_keep_the_numeric_contract(llama_onnx, blocks, tmp_path, algorithm):
    # setup / execute: the data-free int4 searches ONNX Runtime's quantizer offers, as one-command baselines
    from compress.techniques.quantize.graph import count_ops

    fp32 = llama_onnx.model
    out = _quantize(fp32, tmp_path / algorithm, mode="int4", block_size=32, algorithm=algorithm).model
    # assert: every decoder MatMul packed, and the output stays as close to fp32 as round-to-nearest does
    assert count_ops(out.path)["ops"]["MatMulNBits"] == 11
    assert _kl(out, fp32, blocks) < 5e-4

"""Pass `quantize_ort` and `compress.techniques.quantize.ort` on tiny config-built models: integer ops, fidelity, exclusions,
calibration methods, budget search, saved settings, execution-provider warnings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compress.core.errors import CompressError


@pytest.fixture(scope="module")
def fp32_bert(tmp_path_factory):
    """Tiny BERT exported once to ONNX (the fp32 input of most tests)."""
    from compress.export.onnx import export_onnx
    from compress.models.builders import build_tiny

    return export_onnx(build_tiny("bert"), tmp_path_factory.mktemp("fp32") / "onnx").model


@pytest.fixture(scope="module")
def examples():
    from compress.data.examples import Examples

    texts = ["good movie", "bad plot", "great acting", "awful script", "loved it", "hated it", "a fine film",
             "a dull mess", "wonderful", "terrible", "nice", "boring"] * 2
    return Examples(texts=texts, labels=np.array([1, 0] * 12, dtype=np.int64))


def _sqnr_db(model, reference, examples) -> float:
    """10 log10(|ref|^2 / |out - ref|^2) over the logits of `examples` (torchao's fidelity measure)."""
    from compress.data.examples import iter_batches
    from compress.runtime.predict import predict

    batches = list(iter_batches(reference, examples, 8))
    ref, _ = predict(reference, batches)
    out, _ = predict(model, batches)
    noise = ((out - ref) ** 2).sum()
    return float(10 * np.log10((ref ** 2).sum() / noise)) if noise > 0 else float("inf")


def _cfg(**kw):
    from compress.passes.quantize import QuantizeOrtConfig

    return QuantizeOrtConfig(**kw)


def test_dynamic_counts_integer_matmuls_and_keeps_outputs(fp32_bert, examples, tmp_path):
    from compress.techniques.quantize.graph import count_ops
    from compress.techniques.quantize.ort import quantize

    # execute: unfused graph, so every weight MatMul/Gemm maps to one MatMulInteger
    result = quantize(fp32_bert, tmp_path / "q", _cfg(optimize="none"))
    ops = count_ops(result.model.path)["ops"]
    # assert: 2 layers x 6 weight MatMuls + pooler + classifier Gemm; the 4 attention MatMuls stay float
    assert ops["MatMulInteger"] == 14
    assert result.metrics["quantized_matmuls"] == 14 and ops["MatMul"] == 4
    assert _sqnr_db(result.model, fp32_bert, examples) >= 20.0
    assert result.metrics["size_ratio"] < 0.8  # tiny graph: biases, scales and node protos weigh; MiniLM: ~0.25
    assert (tmp_path / "q" / "config.json").exists() and (tmp_path / "q" / "tokenizer.json").exists()


def test_dynamic_on_fused_graph_uses_qattention(fp32_bert, examples, tmp_path):
    from compress.techniques.quantize.graph import count_ops
    from compress.techniques.quantize.ort import quantize

    result = quantize(fp32_bert, tmp_path / "q", _cfg())  # auto: BERT family -> transformer fusions first
    ops = count_ops(result.model.path)["ops"]
    assert result.settings["resolved"]["optimized"] == "transformer"
    assert ops.get("QAttention") == 2 and result.metrics["float_matmuls"] == 0
    assert _sqnr_db(result.model, fp32_bert, examples) >= 20.0


def test_exclusions_are_honoured(fp32_bert, tmp_path):
    from compress.techniques.quantize.graph import count_ops
    from compress.techniques.quantize.ort import quantize

    result = quantize(fp32_bert, tmp_path / "q", _cfg(optimize="none", exclude=["*layer.1/*", "/inner/classifier/Gemm"]))
    counts = count_ops(result.model.path)
    assert counts["quantized_matmuls"] == 14 - 6 - 1
    assert counts["float_matmuls"] == 4 + 6 + 1  # attention scores + layer.1 + classifier (Gemm -> fp32 MatMul)
    assert {e["node"] for e in result.metrics["excluded"]} >= {"/inner/classifier/Gemm"}
    assert all(e["reason"].startswith("user --exclude") for e in result.metrics["excluded"])


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_calibration_methods_run(fp32_bert, examples, tmp_path, method):
    from compress.techniques.quantize.graph import count_ops
    from compress.techniques.quantize.ort import quantize

    result = quantize(fp32_bert, tmp_path / "q", _cfg(mode="static", calibration_method=method, calibration_samples=12),
                      calibration=examples)
    counts = count_ops(result.model.path)
    # assert: only weight MatMuls/Gemms are QDQ; attention score MatMuls (activation x activation) stay float
    assert counts["qdq_matmuls"] == 14 and counts["ops"]["MatMul"] - 12 == 4
    assert result.settings["resolved"]["calibration_method"] == method
    assert _sqnr_db(result.model, fp32_bert, examples) >= 20.0


def test_fp16_converts_weights(fp32_bert, examples, tmp_path):
    import onnx

    from compress.techniques.quantize.ort import quantize

    result = quantize(fp32_bert, tmp_path / "q", _cfg(mode="fp16"))
    graph = onnx.load(str(result.model.path)).graph
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    assert _sqnr_db(result.model, fp32_bert, examples) >= 40.0
    assert any("fp16 targets GPUs" in w for w in result.warnings)


def test_settings_reload_and_replay(fp32_bert, examples, tmp_path):
    from compress.data.examples import iter_batches
    from compress.passes.quantize import load_config, replay_config
    from compress.runtime.predict import predict
    from compress.techniques.quantize.graph import count_ops
    from compress.techniques.quantize.ort import quantize
    from compress.techniques.quantize.result import load_settings

    cfg = _cfg(optimize="none", exclude=["*layer.0/output/*"])
    first = quantize(fp32_bert, tmp_path / "a", cfg)
    # the saved JSON gives back the same config, and a replay config rebuilds the same graph
    assert load_config(tmp_path / "a") == cfg
    settings = load_settings(tmp_path / "a")
    assert settings["resolved"]["reduce_range"] in (True, False) and settings["resolved"]["reasons"]["reduce_range"]
    again = quantize(fp32_bert, tmp_path / "b", replay_config(tmp_path / "a"))
    assert count_ops(again.model.path) == count_ops(first.model.path)
    batches = list(iter_batches(fp32_bert, examples, 8))
    np.testing.assert_array_equal(predict(first.model, batches)[0], predict(again.model, batches)[0])
    assert json.loads((tmp_path / "a" / "compress_model.json").read_text())["quantization"] == "quantization.json"


def test_max_drop_writes_sensitivity_table(fp32_bert, examples, tmp_path):
    from compress.techniques.quantize.ort import quantize

    result = quantize(fp32_bert, tmp_path / "q", _cfg(max_drop=0.05), eval_examples=examples)
    m = result.metrics
    units = {r["unit"] for r in m["sensitivity"]}
    assert {"layer.0", "layer.1", "embeddings"} <= units
    assert [r["rank"] for r in m["sensitivity"]] == list(range(1, len(units) + 1))
    assert m["budget_met"] and m["drop"] <= 0.05 and m["search"][0]["step"] == 0
    assert json.loads((tmp_path / "q" / "quantization.json").read_text())["metrics"]["sensitivity"]


def test_budget_search_keeps_sensitive_units_until_within_budget(tmp_path, monkeypatch):
    from compress.techniques.quantize import sensitivity as q

    # setup: a fake quantizer/scorer where each fp32 unit recovers accuracy by its weight
    recover = {"a": 0.02, "b": 0.005, "c": 0.001}
    monkeypatch.setattr(q, "make_variant", lambda plan, out, exclude: out.with_name("+".join(sorted(exclude))))

    def scorer(path):
        kept = [u for u in recover if u in path.name.split("+")]
        return {"accuracy": 0.80 - 0.03 + sum(recover[u] for u in kept), "mean_kl": 0.0, "sqnr_db": 0.0}

    units = {u: [u] for u in recover}
    ranking = [{"unit": u} for u in ("a", "b", "c")]
    first = {"accuracy": 0.77, "mean_kl": 0.0, "sqnr_db": 0.0}
    # execute: a budget of 0.8 pt needs a, then b kept in fp32 (drop 3 -> 1 -> 0.5 pt)
    improved = []
    steps, best = q.budget_search(None, units, ranking, [], scorer, {"accuracy": 0.80}, 0.008, 3, tmp_path, first,
                                  on_better=lambda path, step: improved.append(step))
    assert best == 2 and steps[best]["excluded_units"] == ["a", "b"]
    assert improved == [1, 2]  # each better model is published as it is found
    # a budget that cannot be met keeps the smallest drop
    steps, best = q.budget_search(None, units, ranking, [], scorer, {"accuracy": 0.80}, 0.0, 2, tmp_path, first)
    assert steps[best]["drop"] == pytest.approx(0.005) and steps[best]["drop"] > 0.0


def test_static_without_calibration_fails(fp32_bert, tmp_path):
    from compress.techniques.quantize.ort import quantize

    with pytest.raises(CompressError, match="calibration"):
        quantize(fp32_bert, tmp_path / "q", _cfg(mode="static"))


def test_exclusion_matching_nothing_fails(fp32_bert, tmp_path):
    from compress.techniques.quantize.ort import quantize

    with pytest.raises(CompressError, match="matches no node"):
        quantize(fp32_bert, tmp_path / "q", _cfg(exclude=["*no_such_layer*"]))


def test_not_an_onnx_model_fails(tmp_path):
    from compress.models.artifacts import OnnxModel
    from compress.techniques.quantize.ort import quantize

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(CompressError, match="not an ONNX model"):
        quantize(OnnxModel(bad, "text-classification"), tmp_path / "q", _cfg())


def test_cuda_target_warns_about_cpu_fallback(fp32_bert, tmp_path):
    from compress.runtime.ort import cuda_available
    from compress.techniques.quantize.ort import quantize

    if cuda_available():
        pytest.skip("measured by the gpu test")
    result = quantize(fp32_bert, tmp_path / "q", _cfg(device="cuda"))
    assert any("fp16" in w and "#9115" in w for w in result.warnings)


def test_pass_registered_and_runs_from_torch(examples, tmp_path):
    from compress.models.builders import build_tiny
    from compress.passes.base import DataBundle, PassContext, get_pass

    info = get_pass("quantize_ort")
    assert info.accepts == ("torch", "onnx") and info.returns == "onnx"
    ctx = PassContext(teacher=None, data=DataBundle(calibration=examples, eval=examples), workdir=tmp_path)
    result = info.fn(build_tiny("bert"), info.config(mode="static", calibration_samples=8), ctx)
    assert result.model.kind == "onnx" and result.metrics["quantized_matmuls"] == 14
    assert "sensitivity" not in result.metrics


def test_image_model_quantizes_linear_layers(tmp_path, digits_examples):
    from compress.export.onnx import export_onnx
    from compress.models.builders import build_tiny
    from compress.techniques.quantize.ort import quantize

    fp32 = export_onnx(build_tiny("mlp"), tmp_path / "fp32").model
    result = quantize(fp32, tmp_path / "q", _cfg())
    assert result.metrics["quantized_matmuls"] >= 2
    assert _sqnr_db(result.model, fp32, digits_examples) >= 20.0


def test_ort_format_written_and_runs(fp32_bert, examples, tmp_path):
    from compress.models.artifacts import OnnxModel
    from compress.techniques.quantize.ort import quantize

    result = quantize(fp32_bert, tmp_path / "q", _cfg(ort_format=True))
    ort_model = OnnxModel(tmp_path / "q" / "model.ort", "text-classification", result.model.tokenizer,
                          result.model.input_names)
    assert _sqnr_db(ort_model, result.model, examples) >= 60.0  # same graph, another file format

"""ONNX export: dynamic axes, parity checked on real inputs, exporter fallback, ORT format and optimization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.core.errors import CompressError
from compress.data.examples import iter_batches
from compress.export.onnx import export_onnx
from compress.models.artifacts import TorchModel
from compress.runtime.predict import Predictor


def test_tiny_bert_export_parity_and_dynamic_axes(tmp_path, tiny_bert, text_examples):
    result = export_onnx(tiny_bert, tmp_path / "onnx")
    assert result.exporter == "torchscript" and result.parity.max_abs_diff < 1e-5
    assert (tmp_path / "onnx" / "config.json").exists() and (tmp_path / "onnx" / "tokenizer.json").exists()
    # batch and sequence sizes other than the traced ones run and agree
    run_onnx, run_torch = Predictor(result.model), Predictor(tiny_bert)
    for batch in iter_batches(tiny_bert, text_examples, batch_size=5):
        assert np.abs(run_onnx(batch) - run_torch(batch)).max() < 1e-5


def test_cnn_export_with_ort_optimization_and_ort_format(tmp_path, tiny_cnn):
    result = export_onnx(tiny_cnn, tmp_path / "cnn", optimize="ort", ort_format=True)
    assert result.ort_path is not None and result.ort_path.exists()
    assert result.parity.argmax_agreement == 1.0 and result.parity.max_abs_diff < 1e-5


def test_transformer_optimization_fuses_bert(tmp_path, tiny_bert):
    import onnx

    result = export_onnx(tiny_bert, tmp_path / "opt", optimize="transformer")
    ops = {n.op_type for n in onnx.load(str(result.model.path)).graph.node}
    assert "SkipLayerNormalization" in ops and result.parity.max_abs_diff < 1e-4


def test_dynamo_exporter(tmp_path, tiny_cnn):
    result = export_onnx(tiny_cnn, tmp_path / "dyn", exporter="dynamo")
    assert result.exporter == "dynamo" and result.opset >= 18 and result.parity.max_abs_diff < 1e-5


class _SignSwitch(torch.nn.Module):
    """Data-dependent control flow: tracing freezes one branch, so ONNX disagrees on the other branch."""

    def forward(self, x):
        flat = x.flatten(1)[:, :3]
        return flat * 2 if flat.sum() > 0 else -flat * 3


def test_parity_failure_reports_the_numbers(tmp_path):
    model = TorchModel(_SignSwitch(), "image-classification", builder="mlp")
    positive = {"inputs": torch.rand(2, 1, 8, 8) + 0.1}
    negative = {"inputs": -torch.rand(2, 1, 8, 8) - 0.1}
    with pytest.raises(CompressError, match=r"max \|Δlogits\| .* argmax agreement"):
        export_onnx(model, tmp_path / "bad", check_batches=[positive, negative], exporter="torchscript")
    assert not (tmp_path / "bad").exists()  # nothing half-written is left as the output


def test_bad_options(tmp_path, tiny_cnn):
    with pytest.raises(CompressError, match="unknown exporter"):
        export_onnx(tiny_cnn, tmp_path / "x", exporter="magic")
    with pytest.raises(CompressError, match="transformer needs a BERT"):
        export_onnx(tiny_cnn, tmp_path / "x", optimize="transformer")


def test_folder_loads_in_optimum(tmp_path, tiny_bert):
    from optimum.onnxruntime import ORTModelForSequenceClassification

    export_onnx(tiny_bert, tmp_path / "onnx")
    ort_model = ORTModelForSequenceClassification.from_pretrained(tmp_path / "onnx")
    inputs = tiny_bert.tokenizer(["a good film"], return_tensors="pt")
    with torch.inference_mode():
        expected = tiny_bert.module(**inputs).logits
    assert torch.allclose(ort_model(**inputs).logits, expected, atol=1e-5)


@pytest.mark.slow
def test_minilm_export_parity_on_sst2_dev(tmp_path, shared_data):
    from compress.data.examples import load_examples
    from compress.models.load import load_model

    model = load_model("minilm", task="text-classification", num_labels=2)
    examples = load_examples(str(shared_data / "sst2"), split="dev", limit=64)
    result = export_onnx(model, tmp_path / "minilm", check_batches=list(iter_batches(model, examples, 16)))
    assert result.parity.examples == 64
    assert result.parity.max_abs_diff < 1e-4 and result.parity.argmax_agreement == 1.0
    from optimum.onnxruntime import ORTModelForSequenceClassification

    assert ORTModelForSequenceClassification.from_pretrained(tmp_path / "minilm") is not None

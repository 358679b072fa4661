"""One scoring path for PyTorch and ONNX; agreement with a reference; label checks."""

from __future__ import annotations

import numpy as np
import pytest

from compress.core.errors import CompressError
from compress.evaluation.accuracy import agreement, evaluate, score


def test_score_by_hand():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    labels = np.array([0, 1, 1, 1])
    metrics = score(logits, labels)
    assert metrics["accuracy"] == 0.5
    # per-class F1: class0 2/3 (tp1 fp1), class1 2/3 (tp1 fn2 -> p=1, r=1/3 -> 0.5)... computed by sklearn
    from sklearn.metrics import f1_score

    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, logits.argmax(-1), average="macro"))


def test_agreement_identical_and_different():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    same = agreement(a, a)
    assert same == {"argmax_agreement": 1.0, "mean_kl": 0.0, "max_abs_diff": 0.0}
    flipped = agreement(a[:, ::-1].copy(), a)
    assert flipped["argmax_agreement"] == 0.0 and flipped["mean_kl"] > 0.1


def test_torch_and_onnx_give_identical_accuracy(tmp_path, tiny_cnn, digits_examples):
    from compress.export.onnx import export_onnx

    onnx_model = export_onnx(tiny_cnn, tmp_path / "cnn").model
    torch_metrics = evaluate(tiny_cnn, digits_examples)
    onnx_metrics = evaluate(onnx_model, digits_examples, reference=tiny_cnn)
    assert torch_metrics["accuracy"] == onnx_metrics["accuracy"]
    assert "macro_f1" in torch_metrics  # ten classes
    assert onnx_metrics["reference"]["argmax_agreement"] == 1.0
    assert onnx_metrics["reference"]["max_abs_diff"] < 1e-5


def test_more_labels_than_outputs_is_an_error(tiny_bert, text_examples):
    text_examples.labels[0] = 5
    with pytest.raises(CompressError, match="label 5 but the model has 2 outputs"):
        evaluate(tiny_bert, text_examples)


@pytest.mark.slow
def test_minilm_torch_and_onnx_same_accuracy_on_sst2_dev(tmp_path, shared_data):
    from compress.data.examples import load_examples
    from compress.export.onnx import export_onnx
    from compress.models.load import load_model

    model = load_model("minilm", task="text-classification", num_labels=2)
    examples = load_examples(str(shared_data / "sst2"), split="dev")
    onnx_model = export_onnx(model, tmp_path / "m").model
    assert evaluate(model, examples)["accuracy"] == evaluate(onnx_model, examples)["accuracy"]

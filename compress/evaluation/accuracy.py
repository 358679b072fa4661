"""Accuracy, macro-F1 and agreement with a reference model, computed the same way for PyTorch and ONNX."""

from __future__ import annotations

import numpy as np

from compress.core.errors import CompressError


def score(logits: np.ndarray, labels: np.ndarray | None, num_classes: int | None = None) -> dict:
    """Task metrics from logits: accuracy, plus macro-F1 when there are more than two classes."""
    out: dict = {"examples": int(len(logits))}
    if labels is None:
        return out
    from sklearn.metrics import f1_score

    pred = logits.argmax(-1)
    out["accuracy"] = float((pred == labels).mean())
    if (num_classes or logits.shape[-1]) > 2:
        out["macro_f1"] = float(f1_score(labels, pred, average="macro"))
    return out


def agreement(logits: np.ndarray, reference: np.ndarray) -> dict:
    """How close `logits` are to a reference model's: argmax agreement, mean KL(ref ‖ model), max |Δlogits|."""
    from scipy.special import log_softmax

    if logits.shape != reference.shape:
        raise CompressError(f"models disagree on output shape {logits.shape} vs {reference.shape}",
                            "compare models with the same labels")
    lp, lq = log_softmax(reference, -1), log_softmax(logits, -1)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return {"argmax_agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean()),
            "mean_kl": float(kl.mean()), "max_abs_diff": float(np.abs(logits - reference).max())}


def evaluate(model, examples, *, reference=None, batch_size: int = 64, max_length: int = 128,
             device: str = "cpu", threads: int | None = None) -> dict:
    """Score `model` (TorchModel or OnnxModel) on `examples`; with `reference`, add agreement with it.

    Args:
        model: the model to score.
        examples: `compress.data.examples.Examples`.
        reference: another model to compare outputs with (e.g. the teacher).
        batch_size: evaluation batch size.
        max_length: token truncation length for text.
        device: "cpu" or "cuda".
        threads: ONNX Runtime intra-op threads.
    """
    from compress.data.examples import iter_batches
    from compress.runtime.predict import predict

    if len(examples) == 0:
        raise CompressError("the evaluation data is empty", "check --data, --split and --limit")
    logits, labels = predict(model, iter_batches(model, examples, batch_size, max_length), device, threads)
    if model.task != "feature-extraction":
        from compress.data.examples import check_labels

        check_labels(examples, logits.shape[-1])  # names the file and line of the first label outside the outputs
    metrics = score(logits, labels, examples.num_labels)
    if reference is not None:
        ref_logits, _ = predict(reference, iter_batches(reference, examples, batch_size, max_length), device, threads)
        metrics["reference"] = agreement(logits, ref_logits)
    return metrics

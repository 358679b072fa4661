"""Helpers (no tests) shared by the pruning / factorization tests: run a pass, round-trip a model, ONNX parity."""

from __future__ import annotations

import numpy as np

from compress.passes.base import DataBundle, PassContext, get_pass


def run_pass(name: str, model, tmp_path, train=None, **cfg):
    info = get_pass(name)
    ctx = PassContext(teacher=None, data=DataBundle(train=train), workdir=tmp_path / "work", progress=False)
    return info.fn(model, info.config(**cfg), ctx)


def logits(model, batch) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model.logits(batch).detach().numpy()


def reload_and_export_parity(model, batch, tmp_path) -> tuple[float, float]:
    """max |Δ| of (saved + reloaded without pickle) and of (ONNX Runtime) against `model` on `batch`."""
    from compress.export.onnx import export_onnx
    from compress.models.load import load_model
    from compress.runtime.predict import Predictor

    model.save(tmp_path / "saved")
    reloaded = load_model(tmp_path / "saved")
    reload_diff = float(np.abs(logits(reloaded, batch) - logits(model, batch)).max())
    result = export_onnx(reloaded, tmp_path / "onnx")
    onnx_diff = float(np.abs(Predictor(result.model)(batch) - logits(model, batch)).max())
    return reload_diff, onnx_diff

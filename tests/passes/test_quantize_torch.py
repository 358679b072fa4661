"""Pass `quantize_torch`: int8 dynamic Linear layers in PyTorch, fidelity, and reload without pickle."""

from __future__ import annotations

import numpy as np
import pytest

from compress.core.errors import CompressError


def _logits(model, texts):
    from compress.data.examples import Examples, iter_batches
    from compress.runtime.predict import predict

    return predict(model, iter_batches(model, Examples(texts=texts), 8))[0]


def test_quantize_torch_swaps_linears_and_reloads(tmp_path):
    from compress.data.examples import sample_texts
    from compress.models.builders import build_tiny
    from compress.models.load import load_model
    from compress.passes.quantize_torch import QuantizeTorchConfig
    from compress.techniques.quantize.pytorch import quantize_torch_model

    # setup
    reference = build_tiny("bert")
    ref = _logits(reference, sample_texts())
    # execute: the classifier stays fp32
    result = quantize_torch_model(build_tiny("bert"), tmp_path / "q", QuantizeTorchConfig(exclude=["classifier"]))
    reloaded = load_model(tmp_path / "q")
    # assert: 2 x 6 encoder Linears + pooler quantized, same outputs after reload, close to fp32
    assert result.metrics["quantized_linears"] == 13
    assert type(reloaded.module.bert.encoder.layer[0].output.dense).__name__ == "Int8DynamicLinear"
    assert type(reloaded.module.classifier).__name__ == "Linear"
    out = _logits(reloaded, sample_texts())
    np.testing.assert_allclose(out, _logits(result.model, sample_texts()), atol=1e-6)
    sqnr = 10 * np.log10((ref ** 2).sum() / ((out - ref) ** 2).sum())
    assert sqnr >= 15.0


def test_quantize_torch_bad_exclude():
    from compress.models.builders import build_tiny
    from compress.techniques.quantize.pytorch import select_linears

    with pytest.raises(CompressError, match="matches no Linear"):
        select_linears(build_tiny("bert").module, ["*"], ["*nothing*"])

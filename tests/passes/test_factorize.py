"""Low-rank factorization: full rank is exact, the rank rules, the FLOP guard, reload and ONNX parity."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from test_prune_helpers import logits, reload_and_export_parity, run_pass

from compress.core.errors import CompressError
from compress.data.examples import iter_batches


def test_full_rank_reproduces_outputs(tmp_path, tiny_bert, tiny_cnn, text_examples, digits_examples):
    for model, batch in ((tiny_bert, next(iter_batches(tiny_bert, text_examples, 6))),
                         (tiny_cnn, next(iter_batches(tiny_cnn, digits_examples, 8)))):
        result = run_pass("factorize", model, tmp_path, rank_ratio=1.0, allow_no_saving=True)
        assert result.metrics["rank_per_layer"] and max(result.metrics["rel_error_per_layer"].values()) < 1e-5
        assert abs(logits(result.model, batch) - logits(model, batch)).max() < 1e-5


def test_flop_guard_skips_layers(tmp_path, tiny_bert):
    # full rank on square 32x32 layers: r (in + out) = 2048 >= in*out = 1024 -> no saving, skipped
    result = run_pass("factorize", tiny_bert, tmp_path, rank_ratio=1.0)
    assert result.metrics["rank_per_layer"] == {} and result.model.surgery == []
    reason = result.metrics["skipped"]["bert.encoder.layer.0.attention.self.query"]
    assert reason.startswith("no FLOP saving")


def test_energy_rule_keeps_at_least_the_energy_and_saves(tmp_path, tiny_bert, text_examples):
    result = run_pass("factorize", tiny_bert, tmp_path, energy=0.5, targets=["*.intermediate.dense", "*.output.dense"])
    layers = result.metrics["layers"]
    assert layers and all(v["energy"] >= 0.5 and v["rank"] % 8 == 0 for v in layers.values())
    for v in layers.values():  # ||W - W_r||_F / ||W||_F = sqrt(1 - energy) for a truncated SVD
        assert v["rel_error"] == pytest.approx((1 - v["energy"]) ** 0.5, abs=1e-4)
    assert result.metrics["params_after"] < result.metrics["params_before"]
    layer = result.model.module.bert.encoder.layer[0].intermediate.dense
    assert isinstance(layer, torch.nn.Sequential) and layer[0].out_features == layers[
        "bert.encoder.layer.0.intermediate.dense"]["rank"]


def test_rank_above_layer_dimensions_is_an_error(tmp_path, tiny_bert):
    with pytest.raises(CompressError, match="above the dimensions"):
        run_pass("factorize", tiny_bert, tmp_path, rank=33)


def test_exactly_one_rank_rule():
    from compress.passes.factorize import FactorizeConfig

    for kwargs in ({}, {"rank_ratio": 0.5, "energy": 0.9}, {"rank_ratio": 1.5}, {"energy": 0.0}):
        with pytest.raises(ValidationError):
            FactorizeConfig(**kwargs)


def test_factorized_models_reload_and_export_with_parity(tmp_path, tiny_bert, tiny_cnn, text_examples,
                                                         digits_examples):
    result = run_pass("factorize", tiny_bert, tmp_path, rank=8)
    batch = next(iter_batches(tiny_bert, text_examples, 6))
    reload_diff, onnx_diff = reload_and_export_parity(result.model, batch, tmp_path / "bert")
    assert reload_diff == 0.0 and onnx_diff < 1e-5
    cnn = run_pass("factorize", tiny_cnn, tmp_path, rank=8, targets=["2", "6"])
    assert isinstance(cnn.model.module[2], torch.nn.Sequential) and cnn.model.module[2][1].kernel_size == (1, 1)
    batch = next(iter_batches(tiny_cnn, digits_examples, 8))
    reload_diff, onnx_diff = reload_and_export_parity(cnn.model, batch, tmp_path / "cnn")
    assert reload_diff == 0.0 and onnx_diff < 1e-5


def test_prune_then_factorize_reloads(tmp_path, tiny_bert, text_examples):
    # surgeries stack in order: FFN pruning, then factorization of the pruned layers
    pruned = run_pass("prune_structured", tiny_bert, tmp_path, sparsity=0.5).model
    both = run_pass("factorize", pruned, tmp_path, rank=8, targets=["*.intermediate.dense"]).model
    assert [s["op"] for s in both.surgery] == ["slice_units", "factorize_lowrank"]
    batch = next(iter_batches(tiny_bert, text_examples, 6))
    reload_diff, onnx_diff = reload_and_export_parity(both, batch, tmp_path)
    assert reload_diff == 0.0 and onnx_diff < 1e-5

"""Structured pruning: units physically removed, expected parameter counts, exact no-op at 0%, rounding,
reload without pickle and ONNX parity."""

from __future__ import annotations

import pytest
import torch
from test_prune_helpers import logits, reload_and_export_parity, run_pass

from compress.core.errors import CompressError
from compress.data.examples import iter_batches
from compress.techniques.prune.structured import round_keep


def test_ffn_neurons_removed_by_the_expected_amount(tmp_path, tiny_bert, text_examples):
    # setup: tiny BERT has hidden 32, FFN 64, 2 layers
    batch = next(iter_batches(tiny_bert, text_examples, 4))
    # execute
    result = run_pass("prune_structured", tiny_bert, tmp_path, sparsity=0.5, unit="neurons")
    # assert: 32 of 64 neurons go per layer: 32 rows (+bias) of the up projection, 32 columns of the down one
    removed = 2 * (32 * 32 + 32 + 32 * 32)
    assert result.metrics["params_before"] - result.metrics["params_after"] == removed
    layer = result.model.module.bert.encoder.layer[0]
    assert layer.intermediate.dense.out_features == 32 and layer.output.dense.in_features == 32
    assert result.model.module.config.intermediate_size == 32
    assert logits(result.model, batch).shape == logits(tiny_bert, batch).shape
    assert tiny_bert.module.bert.encoder.layer[0].intermediate.dense.out_features == 64  # input untouched


def test_zero_sparsity_is_an_exact_no_op(tmp_path, tiny_bert, text_examples):
    batch = next(iter_batches(tiny_bert, text_examples, 6))
    for unit in ("neurons", "heads"):
        result = run_pass("prune_structured", tiny_bert, tmp_path, sparsity=0.0, unit=unit)
        assert result.model.surgery == [] and result.metrics["params_after"] == result.metrics["params_before"]
        assert torch.equal(torch.from_numpy(logits(result.model, batch)), torch.from_numpy(logits(tiny_bert, batch)))


def test_kept_units_are_the_most_important(tmp_path, tiny_bert):
    # setup: make neurons 0..7 of layer 0 clearly the largest
    with torch.no_grad():
        tiny_bert.module.bert.encoder.layer[0].intermediate.dense.weight[:8] *= 100
    result = run_pass("prune_structured", tiny_bert, tmp_path, sparsity=0.75, unit="neurons", importance="l1")
    kept = result.model.module.bert.encoder.layer[0].intermediate.dense.weight
    original = tiny_bert.module.bert.encoder.layer[0].intermediate.dense.weight
    assert kept.shape[0] == 16 and torch.equal(kept[:8], original[:8])


def test_round_keep_rounds_to_multiple_and_never_grows():
    assert round_keep(1536, 0.5, 8) == 768
    assert round_keep(100, 0.3, 8) == 72  # 70 -> nearest multiple of 8
    assert round_keep(37, 0.0, 8) == 37  # 0%: exact no-op even off the multiple
    assert round_keep(37, 0.01, 8) == 37  # rounding never exceeds the layer
    assert round_keep(64, 0.99, 8) == 8  # at least one multiple


def test_heads_pruned_reload_and_export(tmp_path, tiny_bert, text_examples):
    result = run_pass("prune_structured", tiny_bert, tmp_path, sparsity=0.5, unit="heads")
    attn = result.model.module.bert.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 2 and attn.query.out_features == 16
    # per head: Q, K, V rows (3 x 8 x 32 + 3 x 8 bias) + output columns (8 x 32); 2 heads in each of 2 layers
    assert result.metrics["params_before"] - result.metrics["params_after"] == 2 * 2 * (3 * (8 * 32 + 8) + 8 * 32)
    batch = next(iter_batches(tiny_bert, text_examples, 6))
    reload_diff, onnx_diff = reload_and_export_parity(result.model, batch, tmp_path)
    assert reload_diff == 0.0 and onnx_diff < 1e-5


def test_neurons_pruned_reload_and_export(tmp_path, tiny_bert, text_examples):
    result = run_pass("prune_structured", tiny_bert, tmp_path, sparsity=0.5, unit="neurons",
                      targets=["bert.encoder.layer.1"])
    assert list(result.metrics["units_per_layer"]) == ["bert.encoder.layer.1.intermediate.dense"]
    batch = next(iter_batches(tiny_bert, text_examples, 6))
    reload_diff, onnx_diff = reload_and_export_parity(result.model, batch, tmp_path)
    assert reload_diff == 0.0 and onnx_diff < 1e-5


def test_channels_of_a_cnn(tmp_path, digits_examples):
    from compress.models.builders import build_tiny

    # setup: widths 8 -> 16 -> fc 32; round_to 4 so the 8-channel layer can shrink too
    cnn = build_tiny("cnn")
    batch = next(iter_batches(cnn, digits_examples, 16))
    # execute
    result = run_pass("prune_structured", cnn, tmp_path, sparsity=0.5, unit="channels", round_to=4)
    # assert: conv0 8->4, conv2 16->8 (fc input 256->128), fc6 32->16; the output layer keeps its 10 classes
    m = result.model.module
    assert (m[0].out_channels, m[2].in_channels, m[2].out_channels, m[6].in_features, m[6].out_features,
            m[8].out_features) == (4, 4, 8, 128, 16, 10)
    expected = (4 * 9 + 4) + (8 * 4 * 9 + 8) + (128 * 16 + 16) + (16 * 10 + 10)
    assert result.metrics["params_after"] == expected
    reload_diff, onnx_diff = reload_and_export_parity(result.model, batch, tmp_path)
    assert reload_diff == 0.0 and onnx_diff < 1e-5


def test_global_scope_varies_per_layer(tmp_path, tiny_bert):
    with torch.no_grad():  # layer 1's neurons all alike, layer 0's very uneven: global ranking treats them apart
        tiny_bert.module.bert.encoder.layer[0].intermediate.dense.weight[:16] *= 10
    result = run_pass("prune_structured", tiny_bert, tmp_path, sparsity=0.5, scope="global")
    after = [v["after"] for v in result.metrics["units_per_layer"].values()]
    assert after[0] != after[1] and all(a % 8 == 0 for a in after)


def test_wrong_unit_for_the_model(tmp_path, tiny_bert, tiny_cnn):
    with pytest.raises(CompressError, match="channel pruning is for conv/MLP networks, not BertForSequenceClassification"):
        run_pass("prune_structured", tiny_bert, tmp_path, sparsity=0.5, unit="channels")
    with pytest.raises(CompressError, match="feed-forward"):
        run_pass("prune_structured", tiny_cnn, tmp_path, sparsity=0.5, unit="neurons")
    with pytest.raises(CompressError, match="importance"):
        run_pass("prune_structured", tiny_bert, tmp_path, sparsity=0.5, importance="taylor")


def test_recovery_trains_the_pruned_model_from_the_unpruned_one(tmp_path, tiny_bert, text_examples):
    from compress.techniques.distill.recover import RecoverConfig

    before = run_pass("prune_structured", tiny_bert, tmp_path, sparsity=0.5).model
    result = run_pass("prune_structured", tiny_bert, tmp_path, train=text_examples, sparsity=0.5,
                      recover=RecoverConfig(epochs=1, batch_size=4, max_length=16, lr=1e-3))
    assert result.metrics["recovery"]["steps"] == 3
    w_trained = result.model.module.bert.encoder.layer[0].intermediate.dense.weight
    w_pruned = before.module.bert.encoder.layer[0].intermediate.dense.weight
    assert w_trained.shape == w_pruned.shape and not torch.equal(w_trained, w_pruned)  # it trained


def test_configs_round_trip_as_data():
    import json

    from compress.passes.factorize import FactorizeConfig
    from compress.passes.prune_magnitude import PruneMagnitudeConfig
    from compress.passes.prune_structured import PruneStructuredConfig
    from compress.techniques.distill.recover import RecoverConfig

    for cfg in (PruneMagnitudeConfig(sparsity=0.5, scope="global", schedule="gradual", recover=RecoverConfig()),
                PruneStructuredConfig(sparsity=0.5, unit="heads", targets=["*layer.1*"]),
                FactorizeConfig(energy=0.9, recover=RecoverConfig(epochs=1, max_length=64))):
        assert type(cfg).model_validate(json.loads(cfg.model_dump_json())) == cfg
    with pytest.raises(ValueError):
        PruneStructuredConfig(sparsity=0.5, unknown_key=1)  # typos in recipes fail loudly

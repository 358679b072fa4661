"""Unstructured magnitude pruning: exact sparsity per layer / overall, defaults left dense, schedule, masks."""

from __future__ import annotations

import pytest
import torch
from test_prune_helpers import logits, reload_and_export_parity, run_pass

from compress.core.errors import CompressError
from compress.data.examples import iter_batches
from compress.techniques.prune.magnitude import MaskSchedule, cubic_sparsity


def test_layerwise_sparsity_within_one_percent_per_layer(tmp_path, tiny_bert):
    # execute
    result = run_pass("prune_magnitude", tiny_bert, tmp_path, sparsity=0.6)
    # assert: every targeted layer at 60% ±1%, embeddings / classifier / pooler untouched, input unchanged
    per_layer = result.metrics["sparsity_per_layer"]
    assert len(per_layer) == 12 and all(abs(s - 0.6) <= 0.01 for s in per_layer.values())
    module = result.model.module
    assert (module.bert.embeddings.word_embeddings.weight[1:] != 0).all()  # row 0 is the zero padding row
    assert (module.classifier.weight != 0).all()
    assert "classifier" in result.metrics["skipped"]
    assert (tiny_bert.module.bert.encoder.layer[0].intermediate.dense.weight != 0).all()
    assert result.metrics["zipped_mb_after"] < result.metrics["zipped_mb_before"]


def test_global_sparsity_within_one_percent_overall(tmp_path, tiny_cnn):
    result = run_pass("prune_magnitude", tiny_cnn, tmp_path, sparsity=0.7, scope="global")
    per_layer = result.metrics["sparsity_per_layer"]
    assert abs(result.metrics["sparsity_targeted"] - 0.7) <= 0.01
    assert len(set(round(s, 3) for s in per_layer.values())) > 1  # global: layers differ
    assert "8" in result.metrics["skipped"]  # the output Linear is left dense by default


def test_targets_and_exclude_globs(tmp_path, tiny_bert):
    result = run_pass("prune_magnitude", tiny_bert, tmp_path, sparsity=0.5, targets=["*.intermediate.dense"],
                      exclude=["*layer.1.*"])
    assert list(result.metrics["sparsity_per_layer"]) == ["bert.encoder.layer.0.intermediate.dense"]


def test_glob_matching_nothing_is_an_error(tmp_path, tiny_bert):
    with pytest.raises(CompressError, match="matches no layer"):
        run_pass("prune_magnitude", tiny_bert, tmp_path, sparsity=0.5, targets=["*.no_such_layer"])


def test_sparsity_out_of_range_rejected():
    from pydantic import ValidationError

    from compress.passes.prune_magnitude import PruneMagnitudeConfig

    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValidationError):
            PruneMagnitudeConfig(sparsity=bad)


def test_gradual_requires_recovery(tmp_path, tiny_bert):
    with pytest.raises(CompressError, match="gradual"):
        run_pass("prune_magnitude", tiny_bert, tmp_path, sparsity=0.5, schedule="gradual")


def test_cubic_schedule_shape():
    values = [cubic_sparsity(t, 100, 0.8) for t in range(0, 101, 10)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(0.8)
    assert all(a < b for a, b in zip(values[:-1], values[1:], strict=True))  # rising
    assert values[1] - values[0] > values[-1] - values[-2]  # fast early, flat late


def test_mask_schedule_keeps_zeros_through_training_and_ends_exact(tiny_cnn, digits_examples):
    # setup: a training loop that knows nothing about pruning
    module = tiny_cnn.module
    layers = {"0": module[0], "2": module[2], "6": module[6]}
    masks = MaskSchedule(module, layers, final=0.75, global_=False, total_steps=20, every=2, ramp=0.5)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    seen = []
    # execute
    module.train()
    for step, batch in enumerate(iter_batches(tiny_cnn, digits_examples, 4)):
        if step == 20:
            break
        loss = torch.nn.functional.cross_entropy(module(batch["inputs"]), batch["labels"])
        seen.append(float((module[2].weight == 0).float().mean()))  # masked inside the forward
        optimizer.zero_grad(); loss.backward(); optimizer.step()  # noqa: E702
    masks.finish()
    # assert: sparsity rose over the steps and ends exactly at the target, hook removed
    assert seen[0] < 0.2 and seen[-1] == pytest.approx(0.75, abs=0.01)
    assert all(abs((m.weight == 0).float().mean().item() - 0.75) <= 0.01 for m in layers.values())
    module.eval()
    module(torch.zeros(1, 1, 8, 8))
    assert not module._forward_pre_hooks


def test_pruned_model_reloads_and_exports_with_parity(tmp_path, tiny_bert, text_examples):
    result = run_pass("prune_magnitude", tiny_bert, tmp_path, sparsity=0.5)
    batch = next(iter_batches(tiny_bert, text_examples, 6))
    reload_diff, onnx_diff = reload_and_export_parity(result.model, batch, tmp_path)
    assert reload_diff == 0.0 and onnx_diff < 1e-5
    assert abs(logits(result.model, batch) - logits(tiny_bert, batch)).max() > 0  # it did change the model


def test_gradual_pruning_during_recovery_ends_at_target(tmp_path, tiny_bert, text_examples):
    # setup: 12 examples, batch 4, 2 epochs = 6 distillation steps from the unpruned model
    from compress.techniques.distill.recover import RecoverConfig

    recover = RecoverConfig(epochs=2, batch_size=4, max_length=16, lr=1e-3)
    # execute
    result = run_pass("prune_magnitude", tiny_bert, tmp_path, train=text_examples, sparsity=0.5,
                      schedule="gradual", update_every=1, recover=recover)
    # assert: the loop ran, the final masks are exact and permanent, no hook left behind
    assert result.metrics["recovery"]["steps"] == 6
    assert all(abs(s - 0.5) <= 0.01 for s in result.metrics["sparsity_per_layer"].values())
    assert not result.model.module._forward_pre_hooks

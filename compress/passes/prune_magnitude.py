"""Pass `prune_magnitude`: unstructured magnitude pruning (zero the smallest |w|), layer-wise or global,
one-shot or gradual (cubic schedule during recovery). The model keeps its shapes: dense kernels run no
faster; what shrinks is the compressed file (zipped size). Masks are made permanent at the end."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from compress.core.errors import CompressError
from compress.evaluation.size import model_size
from compress.models.artifacts import copy_model
from compress.models.modules import select_modules
from compress.passes.base import PassConfig, PassContext, PassResult, register_pass
from compress.techniques.distill.recover import RecoverConfig, recover, steps_per_run
from compress.techniques.prune.magnitude import MaskSchedule

log = logging.getLogger(__name__)

SPEED_NOTE = ("unstructured sparsity: dense kernels (PyTorch, ONNX Runtime) gain no speed from zeros; "
              "only the compressed size shrinks. Use structured pruning or factorization for latency.")


class PruneMagnitudeConfig(PassConfig):
    """Zero the `sparsity` fraction of smallest-magnitude weights of the targeted Linear/Conv layers."""

    type: Literal["prune_magnitude"] = "prune_magnitude"
    sparsity: float = Field(description="Fraction of weights set to zero, in [0, 1).", ge=0.0, lt=1.0)
    scope: Literal["layer", "global"] = Field("layer", description="layer: each layer reaches `sparsity`; "
                                              "global: one threshold over all targeted weights.")
    schedule: Literal["oneshot", "gradual"] = Field("oneshot", description="gradual: cubic ramp (Zhu & Gupta 2017) "
                                                    "over the recovery steps; needs recover.")
    targets: list[str] = Field(default_factory=list, description="Globs of layer names to prune (default: all).")
    exclude: list[str] = Field(default_factory=list, description="Globs of layer names to leave dense "
                               "(embeddings, classifier and output layer are always left unless targeted).")
    recover: RecoverConfig | None = Field(None, description="Distil from the unpruned model after pruning.")
    update_every: int = Field(10, ge=1, description="Gradual: recompute masks every this many steps.")


@register_pass(PruneMagnitudeConfig, accepts="torch", returns="torch")
def prune_magnitude(model, cfg: PruneMagnitudeConfig, ctx: PassContext) -> PassResult:
    """Prune a copy of `model`; with `cfg.recover`, distil the unpruned model into it under fixed or rising masks."""
    from torch import nn

    if cfg.schedule == "gradual" and cfg.recover is None:
        raise CompressError("gradual pruning happens during recovery training", "add recover (--recover) or use oneshot")
    pruned = copy_model(model)
    chosen = select_modules(pruned.module, (nn.Linear, nn.Conv1d, nn.Conv2d), cfg.targets, cfg.exclude)
    layers = dict(chosen.layers)
    size_before = model_size(model)
    metrics: dict = {}
    if cfg.recover is None:
        MaskSchedule(pruned.module, layers, cfg.sparsity, cfg.scope == "global", total_steps=0).finish()
    else:
        total = steps_per_run(ctx.data.train, cfg.recover) if ctx.data.train is not None else 0
        initial = 0.0 if cfg.schedule == "gradual" else cfg.sparsity
        masks = MaskSchedule(pruned.module, layers, cfg.sparsity, cfg.scope == "global", total,
                             initial=initial, every=cfg.update_every)
        try:
            metrics["recovery"] = recover(pruned, model, ctx.data.train, cfg.recover, ctx.workdir / "recover",
                                          ctx.data.eval, ctx.progress)
        finally:
            masks.finish()
    per_layer = {n: float((m.weight == 0).float().mean()) for n, m in layers.items()}
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    total_weights = sum(m.weight.numel() for m in layers.values())
    size_after = model_size(pruned)
    metrics.update({
        "sparsity_per_layer": per_layer,
        "sparsity_targeted": zeros / max(total_weights, 1),
        "sparsity_model": 1.0 - size_after["nonzero_fraction"],
        "params_before": size_before["params"], "params_after": size_after["params"],
        "nonzero_params_after": int(round(size_after["params"] * size_after["nonzero_fraction"])),
        "zipped_mb_before": size_before["zipped_mb"], "zipped_mb_after": size_after["zipped_mb"],
        "size_mb": size_after["size_mb"],
        "skipped": chosen.skipped, "scope": cfg.scope, "schedule": cfg.schedule, "note": SPEED_NOTE,
    })
    log.info("pruned %d layers to %.1f%% sparsity (%s)", len(layers), 100 * metrics["sparsity_targeted"], cfg.scope)
    return PassResult(pruned, metrics)

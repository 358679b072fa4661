"""Pass `prune_magnitude`: unstructured magnitude pruning (`compress.techniques.prune.magnitude`), optionally with
recovery training under the masks (`compress.techniques.distill.recover`), one-shot or on a gradual schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.passes.base import PassContext, PassResult, register_pass
from compress.techniques.distill.recover import RecoverConfig, recover, steps_per_run
from compress.techniques.prune.magnitude import PruneMagnitudeSettings
from compress.techniques.prune.magnitude import prune_magnitude as prune


class PruneMagnitudeConfig(PruneMagnitudeSettings):
    """Zero the `sparsity` fraction of smallest-magnitude weights of the targeted Linear/Conv layers."""

    type: Literal["prune_magnitude"] = "prune_magnitude"
    recover: RecoverConfig | None = Field(None, description="Distil from the unpruned model after pruning.")
    update_every: int = Field(10, ge=1, description="Gradual: recompute masks every this many steps.")


@register_pass(PruneMagnitudeConfig, accepts="torch", returns="torch")
def prune_magnitude(model, cfg: PruneMagnitudeConfig, ctx: PassContext) -> PassResult:
    """Prune a copy of `model`; with `cfg.recover`, distil the unpruned model into it under fixed or rising masks."""
    train = None
    if cfg.recover is not None:
        def train(pruned):
            return recover(pruned, model, ctx.data.train, cfg.recover, ctx.workdir / "recover", ctx.data.eval,
                           ctx.progress)
    total = steps_per_run(ctx.data.train, cfg.recover) if cfg.recover is not None and ctx.data.train is not None else 0
    pruned, metrics = prune(model, cfg, update_every=cfg.update_every, train_under_masks=train, total_steps=total)
    return PassResult(pruned, metrics)

"""Pass `prune_structured`: remove whole units (`compress.techniques.prune`), then optionally recover by distilling
the unpruned model (or the recipe's teacher) into the pruned one (`compress.techniques.distill.recover`)."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from compress.evaluation.size import model_size
from compress.passes.base import PassContext, PassResult, register_pass
from compress.techniques.distill.recover import RecoverConfig, recover
from compress.techniques.prune.api import prune_structured as prune
from compress.techniques.prune.structured import PruneStructuredSettings

log = logging.getLogger(__name__)


class PruneStructuredConfig(PruneStructuredSettings):
    """Remove the `sparsity` fraction of the least important units of each targeted layer (or overall)."""

    type: Literal["prune_structured"] = "prune_structured"
    recover: RecoverConfig | None = Field(None, description="Distil from the unpruned model after pruning.")


@register_pass(PruneStructuredConfig, accepts="torch", returns="torch")
def prune_structured(model, cfg: PruneStructuredConfig, ctx: PassContext) -> PassResult:
    """Prune a copy of `model`; with `cfg.recover`, distil the unpruned model into it."""
    calibration = ctx.data.calibration if ctx.data.calibration is not None else ctx.data.train
    pruned, metrics = prune(model, cfg, calibration=calibration)
    before, after = model.num_parameters(), pruned.num_parameters()
    if cfg.recover is not None and after < before:
        teacher = ctx.teacher if cfg.recover.from_teacher and ctx.teacher is not None else model
        metrics["recovery"] = recover(pruned, teacher, ctx.data.train, cfg.recover, ctx.workdir / "recover",
                                      ctx.data.eval, ctx.progress)
    metrics.update({"params_before": before, "params_after": after, "params_removed_fraction": 1 - after / before,
                    "size_mb": model_size(pruned)["size_mb"]})
    log.info("structured %s pruning: %d -> %d parameters", cfg.unit, before, after)
    return PassResult(pruned, metrics)

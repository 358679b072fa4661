"""Pass `finetune`: `compress.training.finetune` registered as a pass (its settings plus `type`)."""

from __future__ import annotations

from typing import Literal

from compress.models.artifacts import TorchModel
from compress.passes.base import PassContext, PassResult, register_pass
from compress.training.finetune import FinetuneSettings, check_trainable_classifier, run_finetune


class FinetuneConfig(FinetuneSettings):
    """Fine-tune with cross-entropy on the train split; pick the best epoch on the eval split."""

    type: Literal["finetune"] = "finetune"


@register_pass(FinetuneConfig, accepts="torch", returns="torch", needs=("train",))
def finetune(model: TorchModel, cfg: FinetuneConfig, ctx: PassContext) -> PassResult:
    """Fine-tune `model` on `ctx.data.train`, selecting the best epoch on `ctx.data.eval` (classifiers only)."""
    check_trainable_classifier(model)
    metrics = run_finetune(model, ctx.data.train, cfg, ctx.workdir / "finetune",
                           eval_examples=ctx.data.eval, progress=ctx.progress)
    return PassResult(model, metrics)

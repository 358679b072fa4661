"""Pass `distill`: a student learns the teacher's outputs (KL·T² + CE), optionally its hidden states and attention.
The technique (losses, student derivation, cached teacher outputs, the run) is `compress.techniques.distill`."""

from __future__ import annotations

from typing import Literal

from compress.core.errors import CompressError
from compress.models.artifacts import TorchModel
from compress.passes.base import PassContext, PassResult, register_pass
from compress.techniques.distill.api import distill as run_distill
from compress.techniques.distill.config import DistillSettings
from compress.techniques.distill.student import derive_student


class DistillConfig(DistillSettings):
    """Knowledge distillation from `ctx.teacher` into the input model (or into a student derived from it)."""

    type: Literal["distill"] = "distill"


@register_pass(DistillConfig, accepts="torch", returns="torch", needs=("train",))
def distill(model: TorchModel, cfg: DistillConfig, ctx: PassContext) -> PassResult:
    """Distill `ctx.teacher` into `model` (or into `model` cut to `cfg.student_layers` layers)."""
    if ctx.teacher is None:
        raise CompressError("the distill pass needs a teacher", "run it inside a recipe that has a teacher")
    student = derive_student(model, cfg.student_layers, cfg.layer_map) if cfg.student_layers else model
    metrics = run_distill(student, ctx.teacher, ctx.data.train, cfg, ctx.workdir / "distill",
                          eval_examples=ctx.data.eval, progress=ctx.progress, cache_dir=ctx.cache_dir)
    return PassResult(student, metrics)

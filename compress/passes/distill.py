"""Pass `distill`: a student learns the teacher's outputs (KL·T² + CE), optionally its hidden states and attention.
The machinery (losses, student derivation, cached teacher logits, the run) is `compress.distillation`, which
recovery after pruning uses too."""

from __future__ import annotations

from typing import Literal

from compress.artifacts import TorchModel
from compress.causal import is_causal
from compress.distillation import (  # noqa: F401  (re-exported: the pass module's public names)
    DistillSettings,
    attention_loss,
    check_compatible,
    data_fingerprint,
    derive_student,
    distillation_loss,
    fingerprint,
    hidden_state_loss,
    layer_list,
    layer_map,
    prepare_student,
    run_distillation,
    select_layers,
    teacher_logits,
)
from compress.errors import CompressError
from compress.passes.base import PassContext, PassResult, register_pass


class DistillConfig(DistillSettings):
    """Knowledge distillation from `ctx.teacher` into the input model (or into a student derived from it)."""

    type: Literal["distill"] = "distill"


@register_pass(DistillConfig, accepts="torch", returns="torch", needs=("train",))
def distill(model: TorchModel, cfg: DistillConfig, ctx: PassContext) -> PassResult:
    """Distill `ctx.teacher` into `model` (or into `model` cut to `cfg.student_layers` layers)."""
    if ctx.teacher is None:
        raise CompressError("the distill pass needs a teacher", "run it inside a recipe that has a teacher")
    student = derive_student(model, cfg.student_layers, cfg.layer_map) if cfg.student_layers else model
    if is_causal(student):
        from compress.causal_distillation import causal_texts, run_causal_distillation

        eval_texts = causal_texts(ctx.data.eval) if ctx.data.eval is not None else None
        metrics = run_causal_distillation(student, ctx.teacher, causal_texts(ctx.data.train), cfg,
                                          ctx.workdir / "distill", eval_texts=eval_texts, progress=ctx.progress)
        return PassResult(student, metrics)
    metrics = run_distillation(student, ctx.teacher, ctx.data.train, cfg, ctx.workdir / "distill",
                               eval_examples=ctx.data.eval, progress=ctx.progress)
    return PassResult(student, metrics)

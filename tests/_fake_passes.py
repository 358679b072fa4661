"""Test-only passes registered in the test process: a deterministic logit scaling, and a crash switch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.passes.base import PassConfig, PassContext, PassResult, register_pass

CALLS: list[str] = []  # stage folder names of every call, in order
CRASH: dict = {"at": None}  # raise KeyboardInterrupt (as Ctrl-C would) on the call whose factor equals this


class ScaleConfig(PassConfig):
    """Multiply the last layer (weights and bias) by `factor`: logits scale, argmax stays."""

    type: Literal["test_scale"] = "test_scale"
    factor: float = Field(1.0, gt=0, description="Scale of the last layer.")


@register_pass(ScaleConfig, accepts="torch", returns="torch")
def fake_scale(model, cfg: ScaleConfig, ctx: PassContext) -> PassResult:
    CALLS.append(ctx.workdir.parent.name.split(".tmp-")[0].lstrip("."))
    if CRASH["at"] == cfg.factor:
        raise KeyboardInterrupt
    import torch

    last = [m for m in model.module.modules() if isinstance(m, torch.nn.Linear)][-1]
    last.weight.data.mul_(cfg.factor)
    last.bias.data.mul_(cfg.factor)
    return PassResult(model, {"factor": cfg.factor, "norm_per_layer": {
        name: float(p.detach().norm()) for name, p in model.module.named_parameters() if name.endswith("weight")}})


class NeedsTrainConfig(PassConfig):
    """A pass that needs training data (to test the recipe check)."""

    type: Literal["test_needs_train"] = "test_needs_train"


@register_pass(NeedsTrainConfig, accepts=("torch", "onnx"), returns="torch", needs=("train",))
def fake_needs_train(model, cfg, ctx):
    return PassResult(model, {})

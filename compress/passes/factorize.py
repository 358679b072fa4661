"""Pass `factorize`: SVD low-rank factorization (`compress.techniques.factorize`), then optionally recovery by
distilling the unfactorized model into the factorized one (`compress.techniques.distill.recover`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.passes.base import PassContext, PassResult, register_pass
from compress.techniques.distill.recover import RecoverConfig, recover
from compress.techniques.factorize.lowrank import FactorizeSettings
from compress.techniques.factorize.lowrank import factorize as factorize_model


class FactorizeConfig(FactorizeSettings):
    """Replace targeted layers by rank-r factor pairs; give exactly one of rank_ratio, energy or rank."""

    type: Literal["factorize"] = "factorize"
    recover: RecoverConfig | None = Field(None, description="Distil from the unfactorized model afterwards.")


@register_pass(FactorizeConfig, accepts="torch", returns="torch")
def factorize(model, cfg: FactorizeConfig, ctx: PassContext) -> PassResult:
    """Factorize a copy of `model`; with `cfg.recover`, distil the original model into it."""
    out, metrics = factorize_model(model, cfg)
    if cfg.recover is not None and metrics["rank_per_layer"]:
        metrics["recovery"] = recover(out, model, ctx.data.train, cfg.recover, ctx.workdir / "recover",
                                      ctx.data.eval, ctx.progress)
    return PassResult(out, metrics)

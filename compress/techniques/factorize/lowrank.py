"""Low-rank factorization: truncated SVD of each targeted Linear (and Conv, reshaped to (out, in*k*k)):
W ≈ (U_r Σ_r)(V_rᵀ) becomes two layers in + out -> r -> out. The rank comes from a kept-energy or ratio
rule, rounded to a multiple of 8; layers where r·(in+out) ≥ in·out (no FLOP saving) stay whole and
the metrics say why. The edit is recorded as surgery so the model reloads without pickle."""

from __future__ import annotations

import logging
import math

from pydantic import Field, model_validator

from compress.core.config import StrictConfig
from compress.core.errors import CompressError
from compress.models.artifacts import TorchModel, copy_model
from compress.models.modules import select_modules, swap_module
from compress.models.surgery import factor_pair

log = logging.getLogger(__name__)


class FactorizeSettings(StrictConfig):
    """Replace targeted layers by rank-r factor pairs; give exactly one of rank_ratio, energy or rank."""

    rank_ratio: float | None = Field(None, gt=0, le=1, description="Rank as a fraction of min(in, out).")
    energy: float | None = Field(None, gt=0, le=1, description="Smallest rank keeping this fraction of Σσ².")
    rank: int | None = Field(None, ge=1, description="The same rank for every layer (must fit every layer).")
    round_to: int = Field(8, ge=1, description="Ranks rounded to this multiple (up for energy, nearest for ratio).")
    targets: list[str] = Field(default_factory=list, description="Globs of layer names to factorize (default: all).")
    exclude: list[str] = Field(default_factory=list, description="Globs of layer names to leave whole.")
    allow_no_saving: bool = Field(False, description="Factorize even when r·(in+out) ≥ in·out (only for tests).")

    @model_validator(mode="after")
    def _one_rule(self):
        given = [x for x in (self.rank_ratio, self.energy, self.rank) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of rank_ratio, energy or rank")
        return self


def factorize(model: TorchModel, cfg: FactorizeSettings) -> tuple[TorchModel, dict]:
    """A copy of `model` with its targeted layers replaced by rank-r factor pairs, and the per-layer figures
    (rank, kept energy, relative error; layers left whole with the reason)."""
    import torch
    from torch import nn

    out = copy_model(model)
    chosen = select_modules(out.module, (nn.Linear, nn.Conv1d, nn.Conv2d), cfg.targets, cfg.exclude)
    skipped, per_layer, ranks = dict(chosen.skipped), {}, {}
    for name, layer in chosen.layers:
        if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups != 1:
            skipped[name] = "grouped convolution"
            continue
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()  # (out, in*k*k)
        n_out, n_in = w.shape
        u, s, vh = torch.linalg.svd(w, full_matrices=False)  # (out, m), (m,), (m, in)
        r = _choose_rank(s, cfg, name)
        if r * (n_in + n_out) >= n_in * n_out and not cfg.allow_no_saving:
            skipped[name] = f"no FLOP saving: rank {r}·({n_in}+{n_out}) ≥ {n_in}·{n_out}"
            continue
        # Split Σ evenly (√Σ on each side): the same product as (UΣ)(Vᵀ), better scaled for recovery training.
        root = s[:r].sqrt()
        first, second = factor_pair(layer, r)
        with torch.no_grad():
            first.weight.copy_((root[:, None] * vh[:r]).reshape(first.weight.shape).float())
            second.weight.copy_((u[:, :r] * root[None]).reshape(second.weight.shape).float())
            if layer.bias is not None:
                second.bias.copy_(layer.bias)
        approx = second.weight.detach().reshape(n_out, r).double() @ first.weight.detach().reshape(r, n_in).double()
        per_layer[name] = {"rank": r, "full_rank": len(s), "energy": float((s[:r] ** 2).sum() / (s ** 2).sum()),
                           "rel_error": float((w - approx).norm() / w.norm().clamp(min=1e-12)),
                           "params_before": w.numel(), "params_after": r * (n_in + n_out)}
        swap_module(out.module, name, nn.Sequential(first, second))
        ranks[name] = r
    if ranks:
        out.surgery.append({"op": "factorize_lowrank", "params": {"layers": ranks}})
    before, after = model.num_parameters(), out.num_parameters()
    metrics = {"layers": per_layer, "rank_per_layer": ranks,
               "energy_per_layer": {n: v["energy"] for n, v in per_layer.items()},
               "rel_error_per_layer": {n: v["rel_error"] for n, v in per_layer.items()},
               "params_before": before, "params_after": after, "skipped": skipped}
    log.info("factorized %d layers: %d -> %d parameters", len(ranks), before, after)
    return out, metrics


def _choose_rank(s, cfg: FactorizeSettings, name: str) -> int:
    """Rank from the rule, rounded to `round_to` and capped at the full rank m = min(in, out)."""
    m, step = len(s), cfg.round_to
    if cfg.rank is not None:
        if cfg.rank > m:
            raise CompressError(f"rank {cfg.rank} is above the dimensions of layer '{name}' (at most {m})",
                                f"pass --rank ≤ {m}, or exclude the layer")
        return cfg.rank
    if cfg.energy is not None:
        kept = (s ** 2).cumsum(0) / (s ** 2).sum()
        r = int((kept < cfg.energy - 1e-12).sum()) + 1  # smallest r with kept[r-1] >= energy
        r = math.ceil(r / step) * step  # round up: never keep less energy than asked
    else:
        r = max(step, round(cfg.rank_ratio * m / step) * step)
    return max(1, min(m, r))

"""Magnitude pruning (unstructured): zero the smallest |w|, layer-wise or global, one-shot or gradual (a cubic
schedule while recovery trains). The model keeps its shapes: dense kernels run no faster; what shrinks is the
compressed file (zipped size). Masks are made permanent at the end."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from pydantic import Field

from compress.core.config import StrictConfig
from compress.core.errors import CompressError
from compress.evaluation.size import model_size
from compress.models.artifacts import TorchModel, copy_model
from compress.models.modules import select_modules

log = logging.getLogger(__name__)

SPEED_NOTE = ("unstructured sparsity: dense kernels (PyTorch, ONNX Runtime) gain no speed from zeros; "
              "only the compressed size shrinks. Use structured pruning or factorization for latency.")


class PruneMagnitudeSettings(StrictConfig):
    """Zero the `sparsity` fraction of smallest-magnitude weights of the targeted Linear/Conv layers."""

    sparsity: float = Field(description="Fraction of weights set to zero, in [0, 1).", ge=0.0, lt=1.0)
    scope: Literal["layer", "global"] = Field("layer", description="layer: each layer reaches `sparsity`; "
                                              "global: one threshold over all targeted weights.")
    schedule: Literal["oneshot", "gradual"] = Field("oneshot", description="gradual: cubic ramp (Zhu & Gupta 2017) "
                                                    "over the recovery steps; needs recover.")
    targets: list[str] = Field(default_factory=list, description="Globs of layer names to prune (default: all).")
    exclude: list[str] = Field(default_factory=list, description="Globs of layer names to leave dense "
                               "(embeddings, classifier and output layer are always left unless targeted).")


def cubic_sparsity(step: int, total: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - t/n)^3, rising fast early and flattening out."""
    if total <= 0 or step >= total:
        return final
    return final + (initial - final) * (1.0 - step / total) ** 3


def magnitude_masks(weights: dict, sparsity: float, global_: bool) -> dict:
    """Boolean keep-masks zeroing exactly round(sparsity * n) smallest |w| per layer, or over all layers."""
    import torch

    if global_:
        flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
        k = int(round(sparsity * flat.numel()))
        keep = torch.ones_like(flat, dtype=torch.bool)
        if k:
            keep[torch.topk(flat, k, largest=False).indices] = False
        masks, start = {}, 0
        for name, w in weights.items():
            masks[name] = keep[start:start + w.numel()].reshape(w.shape)
            start += w.numel()
        return masks
    masks = {}
    for name, w in weights.items():
        flat = w.detach().abs().reshape(-1)
        k = int(round(sparsity * flat.numel()))
        keep = torch.ones_like(flat, dtype=torch.bool)
        if k:
            keep[torch.topk(flat, k, largest=False).indices] = False  # exact count, ties broken by index
        masks[name] = keep.reshape(w.shape)
    return masks


class MaskSchedule:
    """Keeps pruned weights at zero while a model trains, raising sparsity on a schedule.

    A forward pre-hook on the root module counts training forwards; every `every` steps it recomputes the
    magnitude masks at `cubic_sparsity(step)` and before every forward it zeroes the masked weights in place,
    so any training loop (the shared distillation loop included) prunes gradually without knowing it.
    """

    def __init__(self, module, layers: dict, final: float, global_: bool, total_steps: int,
                 initial: float = 0.0, every: int = 10, ramp: float = 0.75):
        self.layers, self.final, self.global_ = layers, final, global_
        self.initial, self.every = initial, max(1, every)
        self.ramp_steps = max(1, int(total_steps * ramp))  # hold the final sparsity for the rest
        self.step, self.masks = 0, None
        self._update(initial if total_steps > 0 else final)
        self.handle = module.register_forward_pre_hook(self._hook)

    def _update(self, sparsity: float) -> None:
        self.current = sparsity
        self.masks = magnitude_masks({n: m.weight for n, m in self.layers.items()}, sparsity, self.global_)
        self.apply()

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.weight.mul_(self.masks[name].to(layer.weight.dtype))

    def _hook(self, module, args):
        if module.training:
            self.step += 1
            if self.step % self.every == 0 or self.step >= self.ramp_steps:
                target = cubic_sparsity(self.step, self.ramp_steps, self.final, self.initial)
                if target != self.current:
                    self._update(target)
        self.apply()

    def finish(self) -> None:
        """Make the final masks permanent (exact target sparsity) and remove the hook."""
        self.handle.remove()
        self._update(self.final)


def prune_magnitude(model: TorchModel, cfg: PruneMagnitudeSettings, *, update_every: int = 10,
                    train_under_masks: Callable[[TorchModel], dict] | None = None,
                    total_steps: int = 0) -> tuple[TorchModel, dict]:
    """A magnitude-pruned copy of `model` and its sparsity figures.

    Args:
        model: the model to prune (never modified).
        cfg: sparsity, scope, schedule and the layers targeted.
        update_every: gradual schedule: recompute the masks every this many optimizer steps.
        train_under_masks: trains the copy while the masks hold (recovery); its metrics come back as `recovery`.
            Without it the masks are applied once.
        total_steps: optimizer steps `train_under_masks` will take (the length of the gradual ramp).
    """
    from torch import nn

    if cfg.schedule == "gradual" and train_under_masks is None:
        raise CompressError("gradual pruning happens during recovery training", "add recover (--recover) or use oneshot")
    pruned = copy_model(model)
    chosen = select_modules(pruned.module, (nn.Linear, nn.Conv1d, nn.Conv2d), cfg.targets, cfg.exclude)
    layers = dict(chosen.layers)
    size_before = model_size(model)
    metrics: dict = {}
    if train_under_masks is None:
        MaskSchedule(pruned.module, layers, cfg.sparsity, cfg.scope == "global", total_steps=0).finish()
    else:
        initial = 0.0 if cfg.schedule == "gradual" else cfg.sparsity
        masks = MaskSchedule(pruned.module, layers, cfg.sparsity, cfg.scope == "global", total_steps,
                             initial=initial, every=update_every)
        try:
            metrics["recovery"] = train_under_masks(pruned)
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
    return pruned, metrics

"""Magnitude pruning: masks by weight size, layer-wise or global, with a cubic schedule."""

from __future__ import annotations


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

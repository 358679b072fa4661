"""Shared machinery of the pruning and low-rank passes, split as Torch-Pruning does:
*what* (target selection by glob in `compress.modules`, importance scores here), *how* (surgery that slices
units out of coupled layers, in `compress.surgery`, re-applied by the loader), *when* (the cubic sparsity
schedule and the mask hook used during recovery), and recovery by distillation from the unpruned model.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

from pydantic import Field

from compress.artifacts import TorchModel
from compress.config import StrictConfig
from compress.distillation import DistillSettings, run_distillation
from compress.errors import CompressError
from compress.modules import DEFAULT_EXCLUDE, Targets, select_modules
from compress.registry import Registry
from compress.surgery import UnitGroup, ffn_groups, slice_inputs, slice_outputs, sync_hf_config

log = logging.getLogger(__name__)

# Kept importable from here (older callers): selection lives in compress.modules, surgery in compress.surgery.
__all__ = ["DEFAULT_EXCLUDE", "Targets", "select_layers", "UnitGroup", "ffn_groups", "slice_inputs", "slice_outputs",
           "sync_hf_config"]
select_layers = select_modules

# --- what: importance scores ------------------------------------------------------------------------------

# fn(slices) -> (units,) scores. Each slice is a tensor whose dim 0 runs over the units (neurons, channels,
# heads) and holds every weight that disappears with that unit, in any coupled layer. Higher = keep.
IMPORTANCE = Registry("importance score")
register_importance = IMPORTANCE.register  # `@register_importance(name)` over `fn(slices) -> Tensor (units,)`


@register_importance("l1")
def l1_importance(slices):
    return sum(s.detach().abs().reshape(s.shape[0], -1).sum(1) for s in slices)


@register_importance("l2")
def l2_importance(slices):
    return sum(s.detach().pow(2).reshape(s.shape[0], -1).sum(1) for s in slices).sqrt()


def importance_fn(name: str):
    return IMPORTANCE.lookup(name)


def round_keep(n: int, sparsity: float, multiple: int, minimum: int = 1) -> int:
    """Units to keep of `n` when removing `sparsity` of them, rounded to `multiple` (0% is an exact no-op)."""
    if sparsity <= 0:
        return n
    keep = n * (1.0 - sparsity)
    if multiple > 1:
        keep = round(keep / multiple) * multiple
        minimum = max(minimum, min(multiple, n))
    return int(min(n, max(minimum, round(keep))))


# --- how: surgery that slices units out of coupled layers ------------------------------------------------------


def attention_modules(module) -> list[tuple[str, object, int]]:
    """(name, module, heads) for each attention block that can drop heads (has `prune_heads`)."""
    out = []
    for name, layer in module.named_modules():
        if name and hasattr(layer, "prune_heads") and not hasattr(layer, "base_model_prefix"):
            inner = getattr(layer, "self", layer)  # BertAttention.self holds the head count
            heads = getattr(inner, "num_attention_heads", None) or getattr(inner, "n_heads", None)
            if heads:
                out.append((name, layer, int(heads)))
    return out


def head_slices(layer, heads: int) -> list:
    """Weights that go with each head: Q/K/V rows and output-projection columns, (heads, ...)."""
    inner = getattr(layer, "self", layer)
    out_proj = layer.output.dense if hasattr(layer, "output") else layer.out_lin
    qkv = [inner.query, inner.key, inner.value] if hasattr(inner, "query") else [inner.q_lin, inner.k_lin, inner.v_lin]
    slices = []
    for lin in qkv:
        slices.append(lin.weight.reshape(heads, -1))  # (H*d, in) -> (H, d*in)
        if lin.bias is not None:
            slices.append(lin.bias.reshape(heads, -1))
    slices.append(out_proj.weight.t().reshape(heads, -1))  # columns of (out, H*d) -> (H, d*out)
    return slices


def channel_groups(module, allowed: set[str] | None = None) -> list[UnitGroup]:
    """Output channels of the Conv/Linear layers of a plain `nn.Sequential` stack, each coupled with the
    next weight layer (through activations, pooling, dropout, BatchNorm and one Flatten)."""
    from torch import nn

    if not isinstance(module, nn.Sequential):
        raise CompressError("channel pruning needs a plain nn.Sequential conv/linear stack",
                            "use --structured neurons or heads for transformers")
    passthrough = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Dropout, nn.Identity,
                   nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
    items = list(module.named_children())
    groups = []
    for i, (name, layer) in enumerate(items):
        if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)) or (allowed is not None and name not in allowed):
            continue
        if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups != 1:
            continue
        size = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        outputs, flattened = [name], False
        for next_name, nxt in items[i + 1:]:
            if isinstance(nxt, nn.modules.batchnorm._BatchNorm):
                outputs.append(next_name)
            elif isinstance(nxt, nn.Flatten):
                flattened = True
            elif isinstance(nxt, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                width = nxt.in_features if isinstance(nxt, nn.Linear) else nxt.in_channels
                if width % size == 0 and (flattened or width == size):
                    groups.append(UnitGroup(name, size, outputs, [(next_name, width // size)]))
                break
            elif not isinstance(nxt, passthrough):
                break  # an op we cannot see through: leave this layer whole
    return groups


# --- when: schedule and masks -----------------------------------------------------------------------------


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


# --- recovery -----------------------------------------------------------------------------------------------


class RecoverConfig(StrictConfig):
    """Recovery by distillation from the unedited model (the shared distillation loop)."""

    epochs: float = Field(1.0, gt=0, description="Epochs over the training examples.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(32, ge=1, description="Training batch size.")
    max_length: int = Field(64, ge=2, description="Token truncation length for text.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the distillation loss (1 - alpha on labels).")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the distillation loss.")


def copy_model(model: TorchModel) -> TorchModel:
    """A deep copy of the module (the tokenizer is shared), so a pass never modifies its input."""
    return TorchModel(copy.deepcopy(model.module), model.task, tokenizer=model.tokenizer, builder=model.builder,
                      builder_kwargs=dict(model.builder_kwargs), surgery=list(model.surgery), source=model.source)


def steps_per_run(train, cfg: RecoverConfig) -> int:
    """Optimizer steps the recovery will take (for the pruning schedule)."""
    if cfg.max_steps:
        return cfg.max_steps
    return int(math.ceil(len(train) / cfg.batch_size) * cfg.epochs)


def recover(student: TorchModel, teacher: TorchModel, train, cfg: RecoverConfig, workdir: Path,
            eval_examples=None, progress: bool = True) -> dict:
    """Distil `teacher` (the unedited model) into `student` in place with the shared loop; returns its metrics."""
    if train is None:
        raise CompressError("recovery needs training data", "pass --data (training split) or give the recipe train data")
    wanted = {"epochs": cfg.epochs, "max_steps": cfg.max_steps, "lr": cfg.lr, "batch_size": cfg.batch_size,
              "max_length": cfg.max_length, "alpha": cfg.alpha, "temperature": cfg.temperature}
    fields = DistillSettings.model_fields
    kwargs = {k: v for k, v in wanted.items() if k in fields and v is not None}
    if "epochs" in kwargs and fields["epochs"].annotation is int:
        kwargs["epochs"] = max(1, int(round(cfg.epochs)))
    dropped = sorted(set(k for k, v in wanted.items() if v is not None) - set(kwargs))
    if dropped:
        log.warning("recovery: the distillation loop has no setting for %s; using its defaults", ", ".join(dropped))
    return run_distillation(student, teacher, train, DistillSettings(**kwargs), workdir, eval_examples=eval_examples,
                            progress=progress)

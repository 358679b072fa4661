"""Shared machinery of the pruning and low-rank passes, split as Torch-Pruning does:
*what* (target selection by glob, importance scores), *how* (surgery that slices units out of coupled
layers, re-applied by the loader), *when* (the cubic sparsity schedule and the mask hook used during
recovery), and recovery by distillation from the unpruned model.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from compress.artifacts import TorchModel
from compress.errors import CompressError
from compress.models import register_surgery

log = logging.getLogger(__name__)

# Layers no pass touches unless the user names them: token/position tables and the task head.
DEFAULT_EXCLUDE = ("*embeddings*", "*classifier*", "*lm_head*", "*pooler*")

# --- what: target selection -------------------------------------------------------------------------------


@dataclass
class Targets:
    """Layers a pass will edit, and those it leaves alone with the reason (for the report)."""

    layers: list[tuple[str, object]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def select_layers(module, types: tuple, targets: list[str] | None = None, exclude: list[str] | None = None,
                  exclude_defaults: bool = True) -> Targets:
    """Pick the weight layers of `types` whose names match `targets` (default: all) and none of `exclude`.

    The output layer (the last Linear) and `DEFAULT_EXCLUDE` are left out unless named in `targets`.
    Every glob the user gives must match some layer, else `CompressError` (a typo must not prune nothing).

    Args:
        module: the `nn.Module`.
        types: layer classes to consider, e.g. `(nn.Linear, nn.Conv2d)`.
        targets: fnmatch globs over module names (`bert.encoder.layer.*.intermediate.dense`).
        exclude: globs of names to leave alone.
        exclude_defaults: also leave out embeddings, the classifier and the output layer.
    """
    from torch import nn

    named = [(n, m) for n, m in module.named_modules() if n and isinstance(m, types)]
    all_names = [n for n, _ in module.named_modules() if n]
    for glob in list(targets or []) + list(exclude or []):
        if not any(fnmatch.fnmatchcase(n, glob) for n in all_names):
            raise CompressError(f"the glob '{glob}' matches no layer of the model",
                                f"check the names (e.g. {', '.join(n for n, _ in named[:3])})")
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    output_layer = linears[-1] if linears else None
    out = Targets()
    for name, layer in named:
        if targets and not any(fnmatch.fnmatchcase(name, g) for g in targets):
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in exclude or []):
            out.skipped[name] = "excluded by --exclude"
        elif exclude_defaults and not targets and any(fnmatch.fnmatchcase(name, g) for g in DEFAULT_EXCLUDE):
            out.skipped[name] = "embeddings / task head (excluded by default)"
        elif exclude_defaults and not targets and name == output_layer:
            out.skipped[name] = "output layer (excluded by default)"
        else:
            out.layers.append((name, layer))
    if not out.layers:
        raise CompressError("no layer left to edit after targets/exclude", "widen --targets or narrow --exclude")
    return out


# --- what: importance scores ------------------------------------------------------------------------------

# fn(slices) -> (units,) scores. Each slice is a tensor whose dim 0 runs over the units (neurons, channels,
# heads) and holds every weight that disappears with that unit, in any coupled layer. Higher = keep.
IMPORTANCE: dict[str, Callable] = {}


def register_importance(name: str):
    """Register an importance score `fn(slices: list[Tensor]) -> Tensor (units,)` (higher is kept)."""

    def wrap(fn):
        IMPORTANCE[name] = fn
        return fn

    return wrap


@register_importance("l1")
def l1_importance(slices):
    return sum(s.detach().abs().reshape(s.shape[0], -1).sum(1) for s in slices)


@register_importance("l2")
def l2_importance(slices):
    return sum(s.detach().pow(2).reshape(s.shape[0], -1).sum(1) for s in slices).sqrt()


def importance_fn(name: str) -> Callable:
    if name not in IMPORTANCE:
        raise CompressError(f"unknown importance score '{name}'", f"use one of: {', '.join(sorted(IMPORTANCE))}")
    return IMPORTANCE[name]


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


def _slice_param(layer, attr: str, dim: int, index) -> None:
    import torch

    tensor = getattr(layer, attr)
    if tensor is None:
        return
    new = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    if isinstance(tensor, torch.nn.Parameter):
        setattr(layer, attr, torch.nn.Parameter(new, requires_grad=tensor.requires_grad))
    else:  # a buffer (BatchNorm running statistics)
        setattr(layer, attr, new)


def slice_outputs(layer, index) -> None:
    """Keep output units `index` of a Linear / Conv / BatchNorm (rows of the weight, bias, running stats)."""
    from torch import nn

    if isinstance(layer, nn.Linear):
        _slice_param(layer, "weight", 0, index); _slice_param(layer, "bias", 0, index)  # noqa: E702
        layer.out_features = len(index)
    elif isinstance(layer, nn.modules.conv._ConvNd):
        if layer.groups != 1:
            raise CompressError(f"cannot prune a grouped convolution ({layer})", "exclude it with --exclude")
        _slice_param(layer, "weight", 0, index); _slice_param(layer, "bias", 0, index)  # noqa: E702
        layer.out_channels = len(index)
    elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
        for attr in ("weight", "bias", "running_mean", "running_var"):
            _slice_param(layer, attr, 0, index)
        layer.num_features = len(index)
    else:
        raise CompressError(f"cannot slice outputs of {type(layer).__name__}", "exclude the layer")


def slice_inputs(layer, index, repeat: int = 1) -> None:
    """Keep input units `index` of a Linear / Conv. `repeat` > 1: a Flatten sits before the Linear, so
    each channel owns `repeat` consecutive features (channel-major: (B, C, H, W) -> (B, C*H*W))."""
    import torch
    from torch import nn

    if repeat > 1:
        index = (index[:, None] * repeat + torch.arange(repeat)[None]).reshape(-1)  # (k,) -> (k*repeat,)
    if isinstance(layer, nn.Linear):
        _slice_param(layer, "weight", 1, index)
        layer.in_features = len(index)
    elif isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == 1:
        _slice_param(layer, "weight", 1, index)
        layer.in_channels = len(index)
    else:
        raise CompressError(f"cannot slice inputs of {type(layer).__name__}", "exclude the layer")


@dataclass
class UnitGroup:
    """Units (neurons / channels) shared by coupled layers: removing unit j removes output j of every
    `outputs` layer and input j of every `inputs` layer (with its Flatten repeat)."""

    name: str  # the layer whose outputs define the units (reported per layer)
    size: int
    outputs: list[str]
    inputs: list[tuple[str, int]]

    def slices(self, module) -> list:
        """Every weight that goes with each unit, dim 0 over units (for importance scores)."""
        out = []
        for name in self.outputs:
            layer = module.get_submodule(name)
            if hasattr(layer, "running_mean"):
                continue  # BatchNorm: its scale is not a magnitude of the unit
            out += [p for p in (layer.weight, getattr(layer, "bias", None)) if p is not None]
        for name, _ in self.inputs:
            w = module.get_submodule(name).weight  # (out, in*repeat, ...)
            w = w.transpose(0, 1).reshape(self.size, -1)  # (units, repeat * out * ...)
            out.append(w)
        return out

    def apply(self, module, index) -> None:
        for name in self.outputs:
            slice_outputs(module.get_submodule(name), index)
        for name, repeat in self.inputs:
            slice_inputs(module.get_submodule(name), index, repeat)


@register_surgery("slice_units")
def slice_units_surgery(module, groups: list[dict]) -> None:
    """Loader side of structured pruning: shrink each group to `keep` units (the weights load afterwards)."""
    import torch

    for g in groups:
        group = UnitGroup(g["name"], 0, g["outputs"], [tuple(x) for x in g["inputs"]])
        group.apply(module, torch.arange(g["keep"]))
    sync_hf_config(module)


@register_surgery("prune_heads")
def prune_heads_surgery(module, layers: dict[str, list[int]]) -> None:
    """Remove attention heads: `layers` maps an attention module name to the head indices to drop.
    Uses the module's own `prune_heads` (BERT family), which skips heads already removed (idempotent)."""
    for name, heads in layers.items():
        module.get_submodule(name).prune_heads(list(heads))


def sync_hf_config(module) -> None:
    """Keep `config.intermediate_size` true when every FFN has the same width, so config.json says what
    the weights hold (tools that read only the config then still work)."""
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "intermediate_size"):
        return
    widths = {g.size for g in ffn_groups(module)}
    if len(widths) == 1:
        config.intermediate_size = widths.pop()


def ffn_groups(module) -> list[UnitGroup]:
    """The feed-forward neurons of each transformer layer: BERT/RoBERTa/ELECTRA-style
    (`intermediate.dense` -> `output.dense`) and DistilBERT-style (`ffn.lin1` -> `ffn.lin2`)."""
    from torch import nn

    groups = []
    for name, layer in module.named_modules():
        pairs = [("intermediate.dense", "output.dense"), ("ffn.lin1", "ffn.lin2")]
        for up_name, down_name in pairs:
            try:
                up, down = layer.get_submodule(up_name), layer.get_submodule(down_name)
            except AttributeError:
                continue
            if isinstance(up, nn.Linear) and isinstance(down, nn.Linear) and up.out_features == down.in_features:
                groups.append(UnitGroup(f"{name}.{up_name}", up.out_features, [f"{name}.{up_name}"],
                                        [(f"{name}.{down_name}", 1)]))
    return groups


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


class RecoverConfig(BaseModel):
    """Recovery by distillation from the unedited model (the shared distillation loop)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    try:
        from compress.passes.distill import DistillConfig, run_distillation
    except ImportError as e:
        raise CompressError("recovery needs the distillation pass, which is not installed", "drop --recover") from e
    wanted = {"epochs": cfg.epochs, "max_steps": cfg.max_steps, "lr": cfg.lr, "batch_size": cfg.batch_size,
              "max_length": cfg.max_length, "alpha": cfg.alpha, "temperature": cfg.temperature}
    fields = DistillConfig.model_fields
    kwargs = {k: v for k, v in wanted.items() if k in fields and v is not None}
    if "epochs" in kwargs and fields["epochs"].annotation is int:
        kwargs["epochs"] = max(1, int(round(cfg.epochs)))
    dropped = sorted(set(k for k, v in wanted.items() if v is not None) - set(kwargs))
    if dropped:
        log.warning("recovery: the distillation loop has no setting for %s; using its defaults", ", ".join(dropped))
    return run_distillation(student, teacher, train, DistillConfig(**kwargs), workdir, eval_examples=eval_examples,
                            progress=progress)

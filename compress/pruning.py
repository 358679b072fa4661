"""Shared machinery of the pruning and low-rank passes, split as Torch-Pruning does:
*what* (target selection by glob in `compress.modules`, importance scores here), *how* (surgery that slices
units out of coupled layers, in `compress.surgery`, re-applied by the loader), *when* (the cubic sparsity
schedule and the mask hook used during recovery), and recovery by distillation from the unpruned model.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.artifacts import TorchModel
from compress.causal import is_causal
from compress.config import StrictConfig
from compress.distillation import DistillSettings, run_distillation
from compress.errors import CompressError
from compress.registry import Registry

log = logging.getLogger(__name__)

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
            inner = _self_attention(layer)
            heads = getattr(inner, "num_attention_heads", None) or getattr(inner, "n_heads", None)
            if heads:
                out.append((name, layer, int(heads)))
    return out


def _self_attention(layer):
    """The module holding Q/K/V and the head count: BertAttention.self, ViTAttention.attention, or the layer
    itself (DistilBERT's MultiHeadSelfAttention, ALBERT's AlbertAttention)."""
    return getattr(layer, "self", None) or getattr(layer, "attention", None) or layer


def record_pruned_heads(module, name: str, heads: list[int]) -> None:
    """Add `heads` (original numbering) of the attention block `name` to `config.pruned_heads`, so that
    `from_pretrained` of a saved folder removes the same heads (transformers re-applies them on load)."""
    config = getattr(module, "config", None)
    if config is None:
        return
    numbers = [int(x) for x in name.split(".") if x.isdigit()]
    if getattr(config, "model_type", "") == "albert":  # albert_layer_groups.{g}.albert_layers.{i}
        index = numbers[-2] * config.inner_group_num + numbers[-1]
    else:  # *.layer.{i}.attention
        index = numbers[-1]
    pruned = {int(k): set(v) for k, v in (config.pruned_heads or {}).items()}
    pruned[index] = pruned.get(index, set()) | set(int(h) for h in heads)
    config.pruned_heads = {k: sorted(v) for k, v in sorted(pruned.items())}


def head_slices(layer, heads: int) -> list:
    """Weights that go with each head: Q/K/V rows and output-projection columns, (heads, ...)."""
    inner = _self_attention(layer)
    out_proj = layer.output.dense if hasattr(layer, "output") else getattr(layer, "out_lin", None) or layer.dense
    qkv = [inner.query, inner.key, inner.value] if hasattr(inner, "query") else [inner.q_lin, inner.k_lin, inner.v_lin]
    slices = []
    for lin in qkv:
        slices.append(lin.weight.reshape(heads, -1))  # (H*d, in) -> (H, d*in)
        if lin.bias is not None:
            slices.append(lin.bias.reshape(heads, -1))
    slices.append(out_proj.weight.t().reshape(heads, -1))  # columns of (out, H*d) -> (H, d*out)
    return slices


@dataclass
class ChannelGroup:
    """Channels coupled through the model's graph (Torch-Pruning's dependency graph): removing channel j of
    `name`'s output removes it from every layer in the group (BatchNorm, residual adds, the next layers' inputs)."""

    name: str  # the root layer whose output channels define the units
    size: int
    group: object  # torch_pruning Group with full indices (for importance)
    graph: object  # the DependencyGraph, to prune a group with chosen indices

    def slices(self) -> list:
        """Every Conv/Linear weight that goes with each channel, dim 0 over channels (for importance scores)."""
        import torch
        import torch_pruning as tp

        fn = tp.pruner.function
        out = []
        for i, (dep, idxs) in enumerate(self.group):
            layer, prune_fn = dep.layer, dep.pruning_fn
            if prune_fn in (fn.prune_conv_out_channels, fn.prune_linear_out_channels):
                tensors = [layer.weight.detach().flatten(1)] + ([layer.bias.detach()[:, None]] if layer.bias is not None else [])
            elif prune_fn in (fn.prune_conv_in_channels, fn.prune_linear_in_channels) and getattr(layer, "groups", 1) == 1:
                tensors = [layer.weight.detach().transpose(0, 1).flatten(1)]  # (in, out*k*k)
            else:
                continue  # norms and depthwise kernels: their scale is not a magnitude of the channel
            local = torch.as_tensor(tp._helpers.to_plain_idxs(idxs), dtype=torch.long)
            root = torch.as_tensor(self.group[i].root_idxs, dtype=torch.long)
            if len(local) % self.size:
                continue
            order = torch.argsort(root, stable=True)  # a Flatten maps one channel to several features: group them
            out += [t[local][order].reshape(self.size, -1) for t in tensors]
        return out

    def apply(self, keep) -> None:
        """Keep channels `keep` (sorted indices): prune the others from every coupled layer."""
        drop = sorted(set(range(self.size)) - set(int(i) for i in keep))
        if drop:
            root = self.group[0].dep
            self.graph.get_pruning_group(root.target.module, root.handler, drop).prune()


def channel_groups(model: TorchModel) -> list[ChannelGroup]:
    """Coupled output-channel groups of the Conv/Linear layers of any conv/MLP network (residual connections,
    BatchNorm, Flatten and concatenation included), traced by Torch-Pruning's `DependencyGraph` on one zero
    input of `model.example_shape()`. The output layer (the last Linear) keeps its classes."""
    import torch
    import torch_pruning as tp
    from torch import nn

    module = model.module
    if model.is_hf and model.task != "image-classification":
        raise CompressError(f"channel pruning is for conv/MLP networks, not {type(module).__name__}",
                            "use --structured neurons or heads for transformers")
    if any("Attention" in type(m).__name__ or hasattr(m, "prune_heads") and not hasattr(m, "base_model_prefix")
           for m in module.modules()):
        raise CompressError(f"channel pruning of {type(module).__name__} (it has attention blocks) is not supported",
                            "use --structured neurons or heads for transformers; channels are for conv/MLP networks")
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    forward = (lambda m, x: m(pixel_values=x).logits) if model.is_hf else (lambda m, x: m(x))
    module.eval()
    example = torch.zeros((1, *model.example_shape()[0]))
    graph = tp.DependencyGraph().build_dependency(module, example_inputs=example, forward_fn=forward, verbose=False)
    names = {m: n for n, m in module.named_modules()}
    groups = []
    for group in graph.get_all_groups(ignored_layers=linears[-1:], root_module_types=[nn.Conv1d, nn.Conv2d, nn.Linear]):
        root = group[0].dep.target.module
        if isinstance(root, nn.modules.conv._ConvNd) and root.groups != 1:
            continue  # a depthwise conv is pruned with the group that feeds it
        groups.append(ChannelGroup(names[root], len(group[0].idxs), group, graph))
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
    from_teacher: bool = Field(False, description="Distil from the recipe's teacher instead of this stage's input "
                               "(for chains of pruning stages that recover once, from the original model).")
    # Causal LMs (token-level KD on packed blocks of the train split):
    block_size: int = Field(256, ge=8, description="Causal LMs: tokens per training block.")
    max_blocks: int | None = Field(None, ge=1, description="Causal LMs: at most this many training blocks.")
    teacher_logits: Literal["topk", "online"] = Field("topk", description="Causal LMs: cached top-k teacher "
                                                      "log-probabilities, or a full teacher pass every step.")
    top_k: int = Field(64, ge=1, description="Causal LMs: teacher tokens kept per position (topk).")
    hidden_weight: float = Field(0.0, ge=0, description="Weight of hidden-state matching (0 = off).")


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
    if is_causal(student):
        from compress.causal_distillation import causal_texts, run_causal_distillation

        settings = DistillSettings(epochs=cfg.epochs, max_steps=cfg.max_steps, lr=cfg.lr, batch_size=cfg.batch_size,
                                   alpha=cfg.alpha, temperature=cfg.temperature, block_size=cfg.block_size,
                                   max_blocks=cfg.max_blocks, teacher_logits=cfg.teacher_logits, top_k=cfg.top_k,
                                   hidden_weight=cfg.hidden_weight)
        return run_causal_distillation(student, teacher, causal_texts(train), settings, workdir,
                                       eval_texts=causal_texts(eval_examples) if eval_examples is not None else None,
                                       progress=progress)
    wanted = {"epochs": cfg.epochs, "max_steps": cfg.max_steps, "lr": cfg.lr, "batch_size": cfg.batch_size,
              "max_length": cfg.max_length, "alpha": cfg.alpha, "temperature": cfg.temperature,
              "hidden_weight": cfg.hidden_weight or None}
    fields = DistillSettings.model_fields
    kwargs = {k: v for k, v in wanted.items() if k in fields and v is not None}
    if "epochs" in kwargs and fields["epochs"].annotation is int:
        kwargs["epochs"] = max(1, int(round(cfg.epochs)))
    dropped = sorted(set(k for k, v in wanted.items() if v is not None) - set(kwargs))
    if dropped:
        log.warning("recovery: the distillation loop has no setting for %s; using its defaults", ", ".join(dropped))
    return run_distillation(student, teacher, train, DistillSettings(**kwargs), workdir, eval_examples=eval_examples,
                            progress=progress)

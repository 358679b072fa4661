"""Shared machinery of the pruning and low-rank passes, split as Torch-Pruning does:
*what* (target selection by glob in `compress.models.modules`, importance scores here), *how* (surgery that slices
units out of coupled layers, in `compress.models.surgery`, re-applied by the loader), *when* (the cubic sparsity
schedule and the mask hook used during recovery), and recovery by distillation from the unpruned model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from compress.core.errors import CompressError
from compress.core.registry import Registry
from compress.models.anatomy import _self_attention
from compress.models.artifacts import TorchModel

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


# --- recovery -----------------------------------------------------------------------------------------------



"""Structured pruning of classifiers: whole units (FFN neurons, attention heads, or conv/linear channels coupled
through Torch-Pruning's dependency graph) removed by weight-norm importance, split as Torch-Pruning does: *what*
(target selection by glob in `compress.models.modules`, importance scores here), *how* (surgery that slices units
out of coupled layers, in `compress.models.surgery`, re-applied by the loader). Kept widths are rounded to a
multiple (default 8); the edit is recorded as surgery so the model reloads without pickle (heads also in
`config.pruned_heads`, so `from_pretrained` reloads them). Decoders: `compress.techniques.prune.causal`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from compress.core.config import StrictConfig
from compress.core.errors import CompressError
from compress.core.registry import Registry
from compress.models.anatomy import _self_attention, attention_modules
from compress.models.artifacts import TorchModel
from compress.models.modules import check_globs, matches
from compress.models.surgery import ffn_groups, resize_record, sync_hf_config, tensor_shapes

log = logging.getLogger(__name__)


class PruneStructuredSettings(StrictConfig):
    """Remove the `sparsity` fraction of the least important units of each targeted layer (or overall)."""

    sparsity: float = Field(0.0, description="Fraction of units removed, in [0, 1).", ge=0.0, lt=1.0)
    unit: Literal["neurons", "heads", "channels", "layers"] = Field(
        "neurons", description="neurons: transformer FFN width; heads: attention heads (architectures with "
        "prune_heads: BERT, RoBERTa, ELECTRA, DistilBERT, ALBERT, ViT; for Llama-style decoders whole GQA groups, "
        "a KV head with its query heads); channels: conv/linear channels of any conv/MLP network, coupled through "
        "Torch-Pruning's dependency graph (residuals, BatchNorm, Flatten); layers: whole decoder layers (causal LMs).")
    depth: int | None = Field(None, ge=1, description="unit layers: decoder layers kept (instead of `sparsity`).")
    layer_selection: Literal["importance", "perplexity", "even"] = Field(
        "importance", description="unit layers: importance drops the layers that change their hidden state least "
        "on calibration text (1 - cosine, ShortGPT; one pass); perplexity drops, one at a time, the layer whose "
        "removal raises calibration loss least (greedy, about n x removed passes; better choices); even keeps "
        "evenly spaced layers.")
    calibration_blocks: int = Field(16, ge=1, description="Causal LMs: calibration blocks scored for importance "
                                    "(from the calibration split, else the train split).")
    calibration_block_size: int = Field(128, ge=8, description="Causal LMs: tokens per calibration block.")
    scope: Literal["layer", "global"] = Field("layer", description="layer: the same fraction everywhere; global: "
                                              "rank units across layers (scores normalised by each layer's mean).")
    importance: str = Field("l2", description="Importance score (l1, l2, or one added with "
                            "compress.techniques.prune.structured.register_importance); computed over all weights a unit owns. "
                            "Causal LMs are always scored on calibration activations (see compress.techniques.prune.causal).")
    round_to: int = Field(8, ge=1, description="Kept neurons/channels per layer rounded to this multiple.")
    targets: list[str] = Field(default_factory=list, description="Globs of layer names to prune (default: all).")
    exclude: list[str] = Field(default_factory=list, description="Globs of layer names to leave whole.")

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


def prune_units(pruned: TorchModel, cfg: PruneStructuredSettings) -> dict:
    """Remove the least important units of a classifier in place (`pruned` is a copy); returns what was removed:
    unit, units_per_layer, sparsity_per_layer and skipped (layers left whole, with the reason)."""
    if cfg.unit == "layers":
        raise CompressError("unit layers prunes decoder layers of causal LMs",
                            "use student_layers in a distill stage for encoders")
    units = _units(pruned, cfg)
    before = tensor_shapes(pruned.module) if cfg.unit == "channels" else None
    check_globs([n for n, _ in pruned.module.named_modules() if n], cfg.targets + cfg.exclude)
    chosen, skipped = [], {}
    for name, size, slices, apply in units:
        if matches(name, cfg.exclude, inside=True):
            skipped[name] = "excluded by --exclude"
        elif cfg.targets and not matches(name, cfg.targets, inside=True):
            skipped[name] = "not in --targets"
        else:
            chosen.append((name, size, slices, apply))
    keep = _keep_indices(chosen, cfg)
    surgery, per_layer = [], {}
    for name, size, _, apply in chosen:
        index = keep[name]
        per_layer[name] = {"before": size, "after": len(index), "removed_fraction": 1 - len(index) / size}
        if len(index) < size:
            surgery.append(apply(index))
    if surgery:
        _record(pruned, cfg.unit, surgery, before)
    return {"unit": cfg.unit, "units_per_layer": per_layer,
            "sparsity_per_layer": {n: v["removed_fraction"] for n, v in per_layer.items()}, "skipped": skipped}


def _units(model, cfg):
    """[(name, units, slices_fn, apply_fn(keep_index) -> surgery params)] for the chosen kind of unit."""
    module = model.module
    if cfg.unit == "heads":
        found = attention_modules(module)
        if not found:
            raise CompressError(f"{type(module).__name__} has no attention block with removable heads",
                                "heads: BERT, RoBERTa/XLM-R, ELECTRA, DistilBERT, ALBERT, ViT; use --structured neurons "
                                "or channels")

        def heads_unit(name, layer, heads):
            def apply(index):
                # HF numbers heads as in the original model; map current positions past earlier removals.
                gone = set(getattr(layer, "pruned_heads", set()))
                original = [h for h in range(heads + len(gone)) if h not in gone]
                drop = [original[h] for h in range(heads) if h not in set(index.tolist())]
                layer.prune_heads(drop)
                record_pruned_heads(module, name, drop)
                return name, drop
            return name, heads, (lambda: head_slices(layer, heads)), apply

        return [heads_unit(*x) for x in found]
    if cfg.unit == "neurons":
        groups = ffn_groups(module)
        if not groups:
            raise CompressError(f"no transformer feed-forward block found in {type(module).__name__}",
                                "neurons: BERT, RoBERTa/XLM-R, ELECTRA, DeBERTa-v2, DistilBERT, ALBERT, ViT, ConvNeXt; "
                                "use --structured channels for conv/MLP networks")
    else:
        channels = channel_groups(model)
        if not channels:
            raise CompressError(f"no prunable channel found in {type(module).__name__} (need a Conv/Linear feeding "
                                "another)", "use --structured neurons or heads for transformers")
        return [(g.name, g.size, g.slices, g.apply) for g in channels]

    def group_unit(group):
        def apply(index):
            group.apply(module, index)
            return {"name": group.name, "keep": len(index), "outputs": group.outputs,
                    "inputs": [list(x) for x in group.inputs]}
        return group.name, group.size, (lambda: group.slices(module)), apply

    return [group_unit(g) for g in groups]


def _keep_indices(chosen, cfg) -> dict:
    """Sorted indices of the units each layer keeps: lowest importance removed, counts rounded."""
    import torch

    score = importance_fn(cfg.importance)
    multiple = 1 if cfg.unit == "heads" else cfg.round_to
    scores = {name: score(slices()).float() for name, _, slices, _ in chosen}
    fractions = {name: cfg.sparsity for name, *_ in chosen}
    if cfg.scope == "global" and chosen and cfg.sparsity > 0:
        # Each layer's scores divided by their mean, so layers of different scale compete fairly.
        norm = torch.cat([s / s.mean().clamp(min=1e-12) for s in scores.values()])
        k = int(round(cfg.sparsity * norm.numel()))
        threshold = torch.kthvalue(norm, max(k, 1)).values if k else -float("inf")
        fractions = {n: float((s / s.mean().clamp(min=1e-12) <= threshold).float().mean()) for n, s in scores.items()}
    keep = {}
    for name, size, _, _ in chosen:
        count = round_keep(size, fractions[name], multiple, minimum=1)
        keep[name] = torch.sort(torch.topk(scores[name], count).indices).values
    return keep


def _record(model, unit: str, surgery: list, before: dict | None) -> None:
    if unit == "channels":  # the dependency graph may touch any layer: record every changed shape
        model.surgery.append({"op": "resize", "params": {"modules": resize_record(before, model.module)}})
    elif unit == "heads":
        model.surgery.append({"op": "prune_heads", "params": {"layers": dict(surgery)}})
    else:
        model.surgery.append({"op": "slice_units", "params": {"groups": surgery}})
        sync_hf_config(model.module)

"""Pass `prune_structured`: remove whole units (FFN neurons, attention heads, or conv/linear channels coupled
through Torch-Pruning's dependency graph) scored by weight norm, so the model gets physically smaller and faster.
Kept widths are rounded to a multiple (default 8); the edit is recorded as surgery so the model reloads without
pickle (heads also in `config.pruned_heads`, so `from_pretrained` reloads them)."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from compress.core.errors import CompressError
from compress.evaluation.size import model_size
from compress.models.anatomy import attention_modules
from compress.models.artifacts import copy_model
from compress.models.causal import is_causal
from compress.models.modules import check_globs, matches
from compress.models.surgery import ffn_groups, resize_record, sync_hf_config, tensor_shapes
from compress.passes.base import PassConfig, PassContext, PassResult, register_pass
from compress.techniques.distill.recover import RecoverConfig, recover
from compress.techniques.prune.structured import (
    channel_groups,
    head_slices,
    importance_fn,
    record_pruned_heads,
    round_keep,
)

log = logging.getLogger(__name__)


class PruneStructuredConfig(PassConfig):
    """Remove the `sparsity` fraction of the least important units of each targeted layer (or overall)."""

    type: Literal["prune_structured"] = "prune_structured"
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
    recover: RecoverConfig | None = Field(None, description="Distil from the unpruned model after pruning.")


@register_pass(PruneStructuredConfig, accepts="torch", returns="torch")
def prune_structured(model, cfg: PruneStructuredConfig, ctx: PassContext) -> PassResult:
    """Prune a copy of `model`; with `cfg.recover`, distil the unpruned model into it."""
    pruned = copy_model(model)
    if is_causal(model):
        return _prune_decoder(model, pruned, cfg, ctx)
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
    metrics: dict = {}
    if cfg.recover is not None and surgery:
        metrics["recovery"] = recover(pruned, model, ctx.data.train, cfg.recover, ctx.workdir / "recover",
                                      ctx.data.eval, ctx.progress)
    before, after = model.num_parameters(), pruned.num_parameters()
    metrics.update({
        "unit": cfg.unit, "units_per_layer": per_layer,
        "sparsity_per_layer": {n: v["removed_fraction"] for n, v in per_layer.items()},
        "params_before": before, "params_after": after, "params_removed_fraction": 1 - after / before,
        "size_mb": model_size(pruned)["size_mb"], "skipped": skipped,
    })
    log.info("structured %s pruning: %d -> %d parameters", cfg.unit, before, after)
    return PassResult(pruned, metrics)


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


def _prune_decoder(model, pruned, cfg: PruneStructuredConfig, ctx: PassContext) -> PassResult:
    """Causal LMs: layers, FFN neurons or GQA groups scored on calibration text, removed, the config rewritten."""
    from compress.data.causal import causal_texts, pack_blocks
    from compress.techniques.prune.causal import prune_decoder

    if cfg.unit == "channels":
        raise CompressError("unit channels is for conv/MLP networks", "prune decoders by layers, neurons or heads")
    if cfg.targets or cfg.exclude:
        raise CompressError("targets / exclude are not supported for decoder pruning (every layer keeps one width)",
                            "remove them, or prune layers by depth")
    from compress.models.anatomy import decoder_layers
    from compress.techniques.prune.causal import check_depth

    if cfg.unit == "layers" and cfg.depth is not None:  # a bad depth fails before any text is read
        check_depth(cfg.depth, len(decoder_layers(pruned.module)))
    source = ctx.data.calibration if ctx.data.calibration is not None else ctx.data.train
    needs_text = not (cfg.unit == "layers" and cfg.layer_selection == "even")
    if source is None and needs_text:
        raise CompressError("decoder pruning scores units on calibration text, and none was given",
                            "pass --data (recipes: data.calibration or data.train), or layer_selection: even")
    blocks = (pack_blocks(pruned.tokenizer, causal_texts(source), cfg.calibration_block_size, cfg.calibration_blocks)
              if source is not None else None)
    info = prune_decoder(pruned, cfg.unit, blocks, sparsity=cfg.sparsity, depth=cfg.depth,
                         selection=cfg.layer_selection, round_to=cfg.round_to)
    metrics: dict = {"decoder": info}
    before, after = model.num_parameters(), pruned.num_parameters()
    if cfg.recover is not None and after < before:
        teacher = ctx.teacher if cfg.recover.from_teacher and ctx.teacher is not None else model
        metrics["recovery"] = recover(pruned, teacher, ctx.data.train, cfg.recover, ctx.workdir / "recover",
                                      ctx.data.eval, ctx.progress)
    metrics.update({"unit": cfg.unit, "params_before": before, "params_after": after,
                    "params_removed_fraction": 1 - after / before, "size_mb": model_size(pruned)["size_mb"]})
    log.info("decoder %s pruning: %d -> %d parameters", cfg.unit, before, after)
    return PassResult(pruned, metrics)

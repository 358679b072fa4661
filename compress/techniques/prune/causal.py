"""Structured pruning of decoder LMs (Llama-style: Llama, SmolLM, Mistral, Qwen2): whole layers, FFN neurons and
GQA key/value groups removed physically, scored on activations from calibration text, the config rewritten so
that `from_pretrained` of the saved folder rebuilds the smaller model (no pickle, no surgery record needed).

Scores (one forward pass over the calibration blocks with hooks; Minitron- and ShortGPT-style):
- layer: block influence 1 − cos(input, output) of the residual stream, mean over tokens; the layers that change
  their hidden state least are dropped first (or `even`: evenly spaced, the last kept; or `perplexity`: greedy,
  one layer at a time, the one whose removal raises calibration loss least: slower, about n·(n − depth) passes,
  but it sees that two similar layers are only redundant together);
- FFN neuron j: mean |a_j| of the down_proj input (act(gate) · up) times ‖W_down[:, j]‖₂, i.e. the size of
  its contribution to the residual stream;
- KV group g (a key/value head and the query heads that share it): Σ over its query heads of the mean norm of
  the head's attention output times ‖W_o[:, head]‖_F. A KV head is only ever removed with all its query heads,
  so the query-per-KV ratio, and the attention kernels' GQA layout, are unchanged.
Every layer keeps the same number of neurons / groups, because a Hugging Face config holds one width.
"""

from __future__ import annotations

import logging

import numpy as np

from compress.core.errors import CompressError
from compress.data.causal import causal_texts, pack_blocks
from compress.evaluation.causal import block_perplexity
from compress.models.anatomy import decoder_layers
from compress.models.artifacts import TorchModel
from compress.models.modules import renumber_layers, swap_module
from compress.techniques.prune.structured import PruneStructuredSettings

log = logging.getLogger(__name__)


# --- scores from calibration text ------------------------------------------------------------------------------


def calibration_scores(model: TorchModel, blocks: np.ndarray, batch_size: int = 4) -> dict:
    """Per-layer importance from one pass over `blocks` (N, L): {"layers": (n_layers,), "neurons": [(I,)...],
    "groups": [(G,)...]} as numpy arrays (higher = more important)."""
    import torch

    module = model.module.eval()
    layers = decoder_layers(module)
    config = module.config
    heads, groups = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    n = len(layers)
    influence = np.zeros(n)
    act = [torch.zeros(b.mlp.down_proj.in_features, dtype=torch.float64) for b in layers]
    head_norm = [torch.zeros(heads, dtype=torch.float64) for _ in layers]
    tokens = 0
    hooks = []

    def on_layer(i):
        def hook(mod, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)  # (B, T)
            influence[i] += float((1 - cos).sum())
        return hook

    def on_down(i):
        def hook(mod, args):
            act[i] += args[0].detach().float().abs().sum(dim=(0, 1)).double()
        return hook

    def on_o(i):
        def hook(mod, args):
            x = args[0].detach().float()
            head_norm[i] += x.view(*x.shape[:-1], heads, head_dim).norm(dim=-1).sum(dim=(0, 1)).double()
        return hook

    for i, block in enumerate(layers):
        hooks.append(block.register_forward_hook(on_layer(i), with_kwargs=True))
        hooks.append(block.mlp.down_proj.register_forward_pre_hook(on_down(i)))
        hooks.append(block.self_attn.o_proj.register_forward_pre_hook(on_o(i)))
    try:
        with torch.inference_mode():
            for start in range(0, len(blocks), batch_size):
                ids = torch.from_numpy(np.ascontiguousarray(blocks[start:start + batch_size]))
                module(input_ids=ids, attention_mask=torch.ones_like(ids))
                tokens += ids.numel()
    finally:
        for h in hooks:
            h.remove()
    neurons, kv_groups = [], []
    for i, block in enumerate(layers):
        w_down = block.mlp.down_proj.weight.detach().float()  # (H, I)
        neurons.append((act[i] / tokens).float().numpy() * w_down.norm(dim=0).numpy())
        w_o = block.self_attn.o_proj.weight.detach().float().view(-1, heads, head_dim)  # (H, heads, D)
        per_head = (head_norm[i] / tokens).float() * w_o.norm(dim=(0, 2))
        kv_groups.append(per_head.view(groups, heads // groups).sum(-1).numpy())
    return {"layers": influence / tokens, "neurons": neurons, "groups": kv_groups, "tokens": tokens}


def greedy_layers(model: TorchModel, blocks: np.ndarray, depth: int) -> tuple[list[int], list[dict]]:
    """Drop layers one at a time, each time the one whose removal leaves the lowest next-token loss on `blocks`,
    until `depth` remain: about n·(n − depth) forward passes over the calibration blocks (Shortened LLaMA's
    perplexity criterion, arXiv 2402.02834). Block influence scores every layer in the full model once, so it
    cannot see that two similar layers are only redundant together; this sees each removal's effect.
    Returns the kept indices (sorted) and the trace: which layer went at each step and the loss it left.
    The model is left whole (its layer list is swapped during the search, never edited)."""
    from torch import nn

    inner = model.module.model
    full = inner.layers
    keep, trace = list(range(len(full))), []

    def loss_without(j: int) -> float:
        inner.layers = nn.ModuleList([full[i] for i in keep if i != j])
        return block_perplexity(model, blocks)["nll"]

    try:
        while len(keep) > depth:
            best_loss, drop = min((loss_without(j), j) for j in keep)
            keep.remove(drop)
            trace.append({"dropped": drop, "calibration_loss": round(best_loss, 5)})
    finally:
        inner.layers = full
    return keep, trace


# --- edits -------------------------------------------------------------------------------------------------------


def keep_layers(module, keep: list[int]) -> None:
    """Keep decoder blocks `keep` (0-based, in order); the config and per-layer cache indices follow."""
    from torch import nn

    layers = decoder_layers(module)
    swap_module(module, "model.layers", nn.ModuleList([layers[i] for i in keep]))
    config = module.config
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (sliding / full)
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    renumber_layers(module.model.layers)


def keep_neurons(module, keep: list) -> None:
    """Keep FFN neurons `keep[i]` (sorted index tensors, one length for all layers) of every layer."""
    from compress.models.surgery import slice_inputs, slice_outputs

    for block, index in zip(decoder_layers(module), keep, strict=True):
        slice_outputs(block.mlp.gate_proj, index)
        slice_outputs(block.mlp.up_proj, index)
        slice_inputs(block.mlp.down_proj, index)
        if hasattr(block.mlp, "intermediate_size"):
            block.mlp.intermediate_size = len(index)
    module.config.intermediate_size = len(keep[0])


def keep_groups(module, keep: list) -> None:
    """Keep KV groups `keep[i]` (sorted index tensors, one length for all layers): each group's key and value
    head and its query heads; o_proj loses the matching input columns."""
    import torch

    from compress.models.surgery import slice_inputs, slice_outputs

    config = module.config
    heads, groups = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    per_group = heads // groups
    for block, index in zip(decoder_layers(module), keep, strict=True):
        attn = block.self_attn
        kv_rows = (index[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
        q_heads = (index[:, None] * per_group + torch.arange(per_group)).reshape(-1)
        q_rows = (q_heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
        slice_outputs(attn.q_proj, q_rows)
        slice_outputs(attn.k_proj, kv_rows)
        slice_outputs(attn.v_proj, kv_rows)
        slice_inputs(attn.o_proj, q_rows)
        for attr, value in (("num_heads", len(q_heads)), ("num_key_value_heads", len(index))):
            if hasattr(attn, attr):
                setattr(attn, attr, value)
    config.head_dim = head_dim  # keep it explicit: hidden_size // num_attention_heads no longer gives it
    config.num_attention_heads = len(keep[0]) * per_group
    config.num_key_value_heads = len(keep[0])


# --- choosing what to keep ----------------------------------------------------------------------------------------


def check_depth(depth: int, n: int) -> None:
    if not 1 <= depth <= n:
        raise CompressError(f"cannot keep {depth} decoder layers: the model has {n}",
                            f"pass a depth from 1 to {n} (or a sparsity below 1)")


def layers_to_keep(scores: np.ndarray | None, n: int, depth: int, selection: str) -> list[int]:
    """`depth` of `n` layer indices: the highest block influence, or evenly spaced (last kept); sorted."""
    check_depth(depth, n)
    if selection == "even":
        return [int(np.floor((i + 1) * n / depth + 0.5)) - 1 for i in range(depth)]
    return sorted(int(i) for i in np.argsort(-np.asarray(scores), kind="stable")[:depth])


def top_units(scores: list[np.ndarray], keep: int) -> list:
    """The `keep` best units of each layer, as sorted index tensors."""
    import torch

    return [torch.sort(torch.topk(torch.as_tensor(s), keep).indices).values for s in scores]


def prune_decoder(model: TorchModel, unit: str, blocks: np.ndarray, *, sparsity: float = 0.0,
                  depth: int | None = None, selection: str = "importance", round_to: int = 8) -> dict:
    """Prune `model` in place: `unit` "layers" (to `depth` layers, or drop the `sparsity` fraction), "neurons"
    (FFN width) or "heads" (KV groups with their query heads). Returns what was kept and the scores used.
    Sparsity 0 (or depth = all layers) leaves the model exactly as it was."""
    module = model.module
    layers = decoder_layers(module)
    n, config = len(layers), module.config
    needs_scores = not (unit == "layers" and selection in ("even", "perplexity"))
    scores = calibration_scores(model, blocks) if needs_scores else None
    info: dict = {"unit": unit, "calibration_tokens": scores["tokens"] if scores else 0}
    if unit == "layers":
        depth = depth if depth is not None else n - int(round(sparsity * n))
        if selection == "perplexity":
            check_depth(depth, n)
            keep, trace = greedy_layers(model, blocks, depth)
            info.update(calibration_tokens=int(blocks.size), greedy_trace=trace)
        else:
            keep = layers_to_keep(scores["layers"] if scores else None, n, depth, selection)
        info.update(layers_before=n, layers_after=len(keep), kept_layers=keep, selection=selection,
                    dropped_layers=[i for i in range(n) if i not in keep],
                    block_influence=[round(float(x), 5) for x in scores["layers"]] if scores else None)
        if len(keep) < n:
            keep_layers(module, keep)
    elif unit == "neurons":
        width = layers[0].mlp.down_proj.in_features
        count = width - int(round(sparsity * width))
        count = max(round_to, int(np.ceil(count / round_to)) * round_to) if count < width else width
        count = min(count, width)
        info.update(neurons_before=width, neurons_after=count)
        if count < width:
            keep_neurons(module, top_units(scores["neurons"], count))
    elif unit == "heads":
        groups = config.num_key_value_heads
        count = max(1, groups - int(round(sparsity * groups)))
        info.update(kv_groups_before=groups, kv_groups_after=count,
                    query_heads_before=config.num_attention_heads,
                    query_heads_after=count * (config.num_attention_heads // groups))
        if count < groups:
            kept = top_units(scores["groups"], count)
            info["kept_groups"] = [k.tolist() for k in kept]
            keep_groups(module, kept)
    else:
        raise CompressError(f"unknown decoder pruning unit '{unit}'", "use layers, neurons or heads")
    return info


def prune_decoder_units(pruned: TorchModel, cfg: PruneStructuredSettings, calibration=None) -> dict:
    """Causal LMs: layers, FFN neurons or GQA groups of `pruned` (a copy) scored on calibration text and removed in
    place, the config rewritten; returns {"decoder": what was removed and why, "unit": cfg.unit}.

    Args:
        pruned: the copy to prune.
        cfg: the structured-pruning settings (unit, sparsity or depth, layer selection, calibration blocks).
        calibration: examples whose texts calibrate the importance scores (not needed for `layer_selection: even`).
    """
    if cfg.unit == "channels":
        raise CompressError("unit channels is for conv/MLP networks", "prune decoders by layers, neurons or heads")
    if cfg.targets or cfg.exclude:
        raise CompressError("targets / exclude are not supported for decoder pruning (every layer keeps one width)",
                            "remove them, or prune layers by depth")
    if cfg.unit == "layers" and cfg.depth is not None:  # a bad depth fails before any text is read
        check_depth(cfg.depth, len(decoder_layers(pruned.module)))
    needs_text = not (cfg.unit == "layers" and cfg.layer_selection == "even")
    if calibration is None and needs_text:
        raise CompressError("decoder pruning scores units on calibration text, and none was given",
                            "pass --data (recipes: data.calibration or data.train), or layer_selection: even")
    blocks = (pack_blocks(pruned.tokenizer, causal_texts(calibration), cfg.calibration_block_size,
                          cfg.calibration_blocks) if calibration is not None else None)
    info = prune_decoder(pruned, cfg.unit, blocks, sparsity=cfg.sparsity, depth=cfg.depth,
                         selection=cfg.layer_selection, round_to=cfg.round_to)
    return {"decoder": info, "unit": cfg.unit}

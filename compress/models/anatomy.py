"""Where each family keeps its parts: the stack of transformer layers, a decoder's layers, the attention blocks."""

from __future__ import annotations

from compress.core.errors import CompressError


def layer_list(module):
    """The `nn.ModuleList` of transformer blocks (e.g. `bert.encoder.layer`) and its dotted name."""
    from torch import nn

    n = getattr(getattr(module, "config", None), "num_hidden_layers", None)
    found = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not found:
        raise CompressError(f"cannot derive a student from {type(module).__name__}: it has no list of "
                            "num_hidden_layers transformer blocks", "student layers: BERT, RoBERTa/XLM-R, ELECTRA, "
                            "DeBERTa-v2, DistilBERT, ALBERT, ViT; give a student model for other architectures")
    return found[0]


def decoder_layers(module):
    """The decoder blocks (`model.layers`) of a Llama-style causal LM; a one-line error for others."""
    inner = getattr(module, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not len(layers) or not all(hasattr(b, "self_attn") and hasattr(b, "mlp") for b in layers):
        raise CompressError(f"decoder pruning does not know {type(module).__name__}'s layout",
                            "layers, neurons and heads pruning of decoders: Llama-style models (Llama, SmolLM, "
                            "Mistral, Qwen2); distil into a student you build yourself for others")
    block = layers[0]
    for part, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj"))):
        if not all(hasattr(getattr(block, part), n) for n in names):
            raise CompressError(f"{type(module).__name__} has no {part}.{'/'.join(names)}",
                                "decoder pruning needs Llama-style projections")
    return layers


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

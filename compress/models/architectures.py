"""Tiny, seeded, config-built models of the architectures the passes are proven on (the architecture matrix in
`tests/test_architectures.py` and `scripts/arch_matrix.py`): encoders BERT, DistilBERT, RoBERTa, DeBERTa-v2,
ELECTRA, ALBERT and vision ViT, ResNet, ConvNeXt from transformers. Text models share the in-memory word-level
tokenizer of `tiny:bert`; vision models take the built-in digits (1x8x8, 10 classes).

`scale="base"` builds the same architectures at their published base size (random weights), for latency
measurements (`scripts/arch_matrix.py --bench`).
"""

from __future__ import annotations

from compress.core.errors import CompressError
from compress.models.artifacts import TorchModel
from compress.models.builders import _tiny_tokenizer

TEXT = ("bert", "distilbert", "roberta", "deberta-v2", "electra", "albert")
VISION = ("vit", "resnet", "convnext")


def _text_config(name: str, vocab: int, base: bool):
    from transformers import (
        AlbertConfig,
        BertConfig,
        DebertaV2Config,
        DistilBertConfig,
        ElectraConfig,
        RobertaConfig,
    )

    # tiny: 2 layers, width 32, 4 heads, FFN 64 (HF test convention); base: the published base sizes
    h, n, heads, ffn = (768, 6, 12, 3072) if base else (32, 2, 4, 64)
    common = dict(vocab_size=vocab, num_labels=2, attn_implementation="eager")
    if name == "bert":
        return BertConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads, intermediate_size=ffn,
                          max_position_embeddings=128, **common)
    if name == "distilbert":
        return DistilBertConfig(dim=h, n_layers=n, n_heads=heads, hidden_dim=ffn, max_position_embeddings=128, **common)
    if name == "roberta":  # pad id 0 is the tokenizer's [PAD]; positions start after it
        return RobertaConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads, intermediate_size=ffn,
                             max_position_embeddings=130, pad_token_id=0, type_vocab_size=1, **common)
    if name == "deberta-v2":
        return DebertaV2Config(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads, intermediate_size=ffn,
                               max_position_embeddings=128, relative_attention=True, position_buckets=32,
                               pos_att_type=["p2c", "c2p"], type_vocab_size=0, **common)
    if name == "electra":
        return ElectraConfig(embedding_size=h // 2, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                             intermediate_size=ffn, max_position_embeddings=128, **common)
    if name == "albert":  # one layer's weights shared by every pass (num_hidden_groups=1)
        return AlbertConfig(embedding_size=h // 4 if base else 16, hidden_size=h, num_hidden_layers=n,
                            num_attention_heads=heads, intermediate_size=ffn, num_hidden_groups=1, inner_group_num=1,
                            max_position_embeddings=128, **common)
    raise KeyError(name)


def _vision_config(name: str, base: bool):
    from transformers import ConvNextConfig, ResNetConfig, ViTConfig

    common = dict(num_labels=10, num_channels=1)
    if name == "vit":
        h, n, heads, ffn = (768, 6, 12, 3072) if base else (32, 2, 4, 64)
        return ViTConfig(image_size=8, patch_size=2, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                         intermediate_size=ffn, attn_implementation="eager", **common)
    if name == "resnet":  # basic blocks with residual adds and BatchNorm
        sizes, depths = ([64, 128, 256, 512], [2, 2, 2, 2]) if base else ([8, 16], [1, 1])
        return ResNetConfig(embedding_size=sizes[0], hidden_sizes=sizes, depths=depths, layer_type="basic",
                            downsample_in_first_stage=False, **common)
    if name == "convnext":  # depthwise conv, channels-last LayerNorm, pointwise MLP, layer scale, residual
        sizes, depths = ([96, 192, 384, 768], [3, 3, 9, 3]) if base else ([8, 16], [1, 1])
        return ConvNextConfig(patch_size=2, num_stages=len(sizes), hidden_sizes=sizes, depths=depths, image_size=8,
                              **common)
    raise KeyError(name)


def build_arch(name: str, *, seed: int = 0, scale: str = "tiny") -> TorchModel:
    """A randomly initialised (seeded) classification model of architecture `name` (see `TEXT` and `VISION`)."""
    import torch
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    base = scale == "base"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if name in TEXT:
            tokenizer = _tiny_tokenizer()
            module = AutoModelForSequenceClassification.from_config(_text_config(name, len(tokenizer), base))
            return TorchModel(module.eval(), "text-classification", tokenizer=tokenizer, source=f"arch:{name}")
        if name in VISION:
            module = AutoModelForImageClassification.from_config(_vision_config(name, base))
            return TorchModel(module.eval(), "image-classification", source=f"arch:{name}")
    raise CompressError(f"unknown architecture '{name}'", f"use one of: {', '.join(TEXT + VISION)}")

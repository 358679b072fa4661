"""Tiny config-built decoders: seeded, grouped-query attention, tied embeddings counted once."""

from __future__ import annotations

import pytest


def test_tiny_decoders_are_seeded_and_gqa(llama):
    import torch

    from compress.models.load import load_model

    again = load_model("tiny:llama")
    assert llama.task == "text-generation" and again.task == "text-generation"
    for a, b in zip(llama.module.state_dict().values(), again.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    config = llama.module.config
    assert config.num_key_value_heads < config.num_attention_heads  # GQA, like SmolLM2
    assert load_model("tiny:gpt2").module.config.model_type == "gpt2"


def test_tied_embeddings_are_counted_once(llama):
    from compress.evaluation.size import model_size

    assert llama.module.config.tie_word_embeddings
    size = model_size(llama)
    assert size["size_mb"] == pytest.approx(llama.num_parameters() * 4 / 1e6, rel=0.02)

"""What makes a model a causal LM (decoder): its task name, its context length, and a tokenizer that can pad."""

from __future__ import annotations

import json

from compress.models.artifacts import CAUSAL_TASK, TorchModel  # noqa: F401  (CAUSAL_TASK: re-exported)


def prepare_tokenizer(tokenizer):
    """Decoders often ship without a pad token (SmolLM2's is None): pad with EOS, masks make it harmless."""
    if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def is_causal(model) -> bool:
    return getattr(model, "task", None) == CAUSAL_TASK


def context_length(model) -> int | None:
    """Longest sequence the model takes (max_position_embeddings / n_positions), None when unknown."""
    config = _config(model)
    if config is None:
        return None
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if value:
            return int(value)
    return None


def _config(model):
    if isinstance(model, TorchModel):
        return getattr(model.module, "config", None)

    path = model.folder / "config.json"
    return json.loads(path.read_text()) if path.exists() else None

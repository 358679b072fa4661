"""Distillation settings (the distill pass's config without its `type`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.training.loop import TrainConfig


class DistillSettings(TrainConfig):
    """Knowledge distillation settings: the loss weights and the shared loop's hyperparameters."""

    lr: float = Field(1e-4, gt=0, description="Peak learning rate of AdamW.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T; the KL term is scaled by T².")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the KL term; 1 − α weights cross-entropy with the labels.")
    hidden_weight: float = Field(0.0, ge=0, description="Weight of the hidden-state MSE over mapped layers (0 = off).")
    attention_weight: float = Field(0.0, ge=0, description="Weight of the attention-map MSE over mapped layers (0 = off).")
    layer_map: list[int] | None = Field(None, description="Teacher layer (0-based) for each student layer; default: evenly spaced, last kept.")
    projection: bool = Field(True, description="Learn a linear projection student→teacher width when hidden sizes differ.")
    student_layers: int | None = Field(None, ge=1, description="Derive the student from the input model: K evenly spaced layers.")
    # Causal language models (token-level KD, `compress.techniques.distill.causal`):
    block_size: int = Field(256, ge=8, description="Causal LMs: tokens per packed training block.")
    max_blocks: int | None = Field(None, ge=1, description="Causal LMs: at most this many training blocks (None = all).")
    eval_blocks: int = Field(32, ge=1, description="Causal LMs: held-out blocks whose perplexity picks the best epoch.")
    teacher_logits: Literal["topk", "online"] = Field(
        "topk", description="Causal LMs: topk = the teacher's top-k log-probabilities cached once (KL over k tokens "
        "plus the merged tail); online = a full-vocabulary teacher pass every step.")
    top_k: int = Field(64, ge=1, description="Causal LMs: tokens per position kept in the teacher cache.")

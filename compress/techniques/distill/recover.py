"""Recovery training: distil the unedited model into an edited one (after pruning or factorization)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.core.config import StrictConfig
from compress.core.errors import CompressError
from compress.models.artifacts import TorchModel
from compress.techniques.distill.api import distill
from compress.techniques.distill.config import DistillSettings


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
    # One settings object for both kinds: classifiers read max_length, causal LMs the block and top-k fields.
    settings = DistillSettings(epochs=cfg.epochs, max_steps=cfg.max_steps, lr=cfg.lr, batch_size=cfg.batch_size,
                               max_length=cfg.max_length, alpha=cfg.alpha, temperature=cfg.temperature,
                               hidden_weight=cfg.hidden_weight, block_size=cfg.block_size, max_blocks=cfg.max_blocks,
                               teacher_logits=cfg.teacher_logits, top_k=cfg.top_k)
    return distill(student, teacher, train, settings, workdir, eval_examples=eval_examples, progress=progress)

"""The distillation entry point: the one place where classifiers and causal LMs part ways.

Classifiers learn the teacher's logits on labelled examples (`run.run_distillation`); causal LMs learn its next-token
distribution on packed text blocks (`causal.run_causal_distillation`). Passes, recovery and the CLI call `distill`.
"""

from __future__ import annotations

from pathlib import Path

from compress.data.causal import causal_texts
from compress.models.artifacts import TorchModel
from compress.models.causal import is_causal
from compress.techniques.distill.causal import run_causal_distillation
from compress.techniques.distill.config import DistillSettings
from compress.techniques.distill.run import run_distillation


def distill(student: TorchModel, teacher: TorchModel, train, cfg: DistillSettings, workdir: Path, *,
            eval_examples=None, progress: bool = True, cache_dir: Path | None = None) -> dict:
    """Train `student` in place to match `teacher` (never modified); returns the training loop's metrics.

    Args:
        student: the model trained in place (a classifier or a causal LM, the same kind as `teacher`).
        teacher: the reference model.
        train: training `Examples` (causal LMs read their texts).
        cfg: distillation settings; the causal fields (block_size, top_k...) apply to causal LMs only.
        workdir: checkpoints (resume) and the best epoch's weights.
        eval_examples: held-out examples that pick the best epoch (accuracy, or perplexity for causal LMs).
        progress: draw a progress bar.
        cache_dir: where teacher outputs are cached (default under $COMPRESS_CACHE; causal LMs use its
            `teacher-topk` folder).
    """
    if is_causal(student):
        eval_texts = causal_texts(eval_examples) if eval_examples is not None else None
        return run_causal_distillation(student, teacher, causal_texts(train), cfg, workdir, eval_texts=eval_texts,
                                       progress=progress, cache_dir=cache_dir and cache_dir / "teacher-topk")
    return run_distillation(student, teacher, train, cfg, workdir, eval_examples=eval_examples, progress=progress,
                            cache_dir=cache_dir)

"""Fine-tuning: supervised training of a task model on labelled data (cross-entropy; the teacher maker)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from compress.core.errors import CompressError
from compress.models.artifacts import TorchModel
from compress.training.loop import TrainConfig, cross_entropy_objective, fit
from compress.training.progress import RichProgress


class FinetuneSettings(TrainConfig):
    """Fine-tune with cross-entropy on the train split; pick the best epoch on the eval split."""

    epochs: float = Field(3.0, gt=0, description="Passes over the training data (fractions allowed).")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate of AdamW.")


def run_finetune(model: TorchModel, train, cfg: FinetuneSettings, workdir: Path, eval_examples=None,
                 progress: bool = True, callback=None) -> dict:
    """Fine-tune `model.module` in place on `train` (labels required); returns the loop's metrics.

    Args:
        model: the model to train; its classification head must have as many outputs as the data has labels.
        train: labelled training `Examples`.
        cfg: hyperparameters.
        workdir: folder for checkpoints (resume) and the best epoch's weights.
        eval_examples: labelled examples scored after each epoch (model selection, early stopping).
        progress: draw a rich progress bar (ignored when `callback` is given).
        callback: receives the loop's events instead of the bar.
    """

    check_trainable_classifier(model)
    check_labels(model, train)
    if callback is None and progress:
        callback = RichProgress("finetune")
    return fit(model, cross_entropy_objective(model), train, cfg, workdir, eval_examples=eval_examples,
               callback=callback)


def check_trainable_classifier(model) -> None:
    """Fine-tuning trains a classifier (cross-entropy over labels): a causal LM is refused before any work."""
    from compress.models.causal import is_causal

    if is_causal(model):
        name = getattr(model, "source", None) or "the model"
        raise CompressError(f"finetune trains classifiers and '{name}' is a causal LM (text-generation)",
                            "for a causal LM use distill (teacher -> student) or prune/factorize --recover")


def check_labels(model: TorchModel, examples) -> None:
    """Labels are present and each one is an output of the model."""
    if examples.labels is None:
        raise CompressError("the training data has no labels", "pass data with a label field (--label-field)")
    outputs = model.num_labels
    if outputs is not None and len(examples.labels) and int(examples.labels.max()) >= outputs:
        raise CompressError(f"the data has {int(examples.labels.max()) + 1} labels but the model has {outputs} outputs",
                            "pass --num-labels matching the data")

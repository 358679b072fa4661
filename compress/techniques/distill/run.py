"""Knowledge distillation, the training-layer machinery behind the `distill` pass and recovery after
pruning: a student learns the teacher's outputs (KL·T² + CE), optionally its hidden states and attention.

loss = α · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α) · CE(y, z_s)
       + hidden_weight · MSE(P·h_s, h_t) + attention_weight · MSE(A_s, A_t)   over mapped layers

The teacher's logits are computed once per (teacher, data, max_length) with the teacher in inference mode and
cached on disk; hidden states and attention maps (only when their weights are > 0) come from a teacher forward
pass at each step. A student can be derived from the teacher (`student_layers=K`: embeddings, head and K
evenly spaced layers, the last one always kept: it is the one the classifier was trained on).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from compress.core.errors import CompressError
from compress.models.artifacts import TorchModel
from compress.techniques.distill.config import DistillSettings
from compress.techniques.distill.losses import attention_loss, distillation_loss, hidden_state_loss
from compress.techniques.distill.student import select_layers
from compress.techniques.distill.teacher import default_cache_dir, teacher_logits
from compress.training.loop import fit, make_batch, objective_module
from compress.training.progress import RichProgress

log = logging.getLogger(__name__)


# --- losses (pure functions) -------------------------------------------------------------------------------


# --- students ----------------------------------------------------------------------------------------------


# --- teacher logits, cached --------------------------------------------------------------------------------


# --- checks --------------------------------------------------------------------------------------------------


def check_compatible(student: TorchModel, teacher: TorchModel, train, cfg: DistillSettings) -> None:
    """Bad pairs fail before training: label counts, vocabularies, labels for CE, hidden widths, layer map."""
    if cfg.alpha < 1 and train.labels is None:
        raise CompressError(f"the training data has no labels but alpha is {cfg.alpha} (< 1 mixes in cross-entropy)",
                            "pass alpha 1 for pure distillation, or labelled data")
    if student.num_labels is not None and teacher.num_labels is not None and student.num_labels != teacher.num_labels:
        raise CompressError(f"the teacher has {teacher.num_labels} labels and the student {student.num_labels}",
                            "give both models the same classification head size")
    if student.is_hf != teacher.is_hf:
        raise CompressError("teacher and student must both be Hugging Face models or both plain modules",
                            "pass a matching student")
    if student.tokenizer is not None and teacher.tokenizer is not None:
        if student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
            raise CompressError("the teacher and the student have different vocabularies",
                                "distill into a student with the teacher's tokenizer (e.g. --student-layers)")
    if cfg.hidden_weight > 0 or cfg.attention_weight > 0:
        if not student.takes_tokens:
            raise CompressError("hidden-state and attention losses need Hugging Face text transformers",
                                "set hidden_weight and attention_weight to 0 for vision and plain modules")
        mapped = layer_map(student, teacher, cfg)
        log.info("layer map (student -> teacher): %s", mapped)
    if cfg.hidden_weight > 0 and not cfg.projection:
        s_width, t_width = student.module.config.hidden_size, teacher.module.config.hidden_size
        if s_width != t_width:
            wider = "wider than" if s_width > t_width else "narrower than"
            raise CompressError(f"the student's hidden size {s_width} is {wider} the teacher's {t_width} and the "
                                "hidden-state loss has no projection", "enable the projection or set hidden_weight 0")


def layer_map(student: TorchModel, teacher: TorchModel, cfg: DistillSettings) -> list[int]:
    """Teacher layer (0-based) matched to each student layer: `cfg.layer_map`, or evenly spaced, last kept."""
    n_s, n_t = student.module.config.num_hidden_layers, teacher.module.config.num_hidden_layers
    mapped = list(cfg.layer_map) if cfg.layer_map else select_layers(n_t, n_s)
    if len(mapped) != n_s or not all(0 <= m < n_t for m in mapped):
        raise CompressError(f"layer map {mapped} must give one teacher layer (0..{n_t - 1}) per student layer ({n_s})",
                            "fix --layer-map")
    return mapped


# --- the run -------------------------------------------------------------------------------------------------


def run_distillation(student: TorchModel, teacher: TorchModel, train, cfg: DistillSettings, workdir: Path,
                     eval_examples=None, progress: bool = True, cache_dir: Path | None = None,
                     callback=None) -> dict:
    """Train `student.module` in place to match `teacher` on `train`; returns the loop's metrics.

    Args:
        student: the model trained (derive one first with `prepare_student` / `derive_student` if needed).
        teacher: the reference model; never modified (inference mode, no gradients).
        train: training `Examples`; labels are needed when `cfg.alpha < 1`.
        cfg: loss weights and loop hyperparameters.
        workdir: checkpoints and the best epoch's weights.
        eval_examples: labelled examples scored after each epoch (best epoch kept).
        progress: draw a rich progress bar (ignored when `callback` is given).
        cache_dir: where teacher logits are cached; default `default_cache_dir()` (shared between stages).
        callback: receives the loop's events instead of the bar.
    """
    import torch


    check_compatible(student, teacher, train, cfg)
    teacher.module.eval()  # its forward passes run under no_grad and its weights are not optimised
    cached = teacher_logits(teacher, train, cfg.max_length, Path(cache_dir or default_cache_dir()))
    student.module.eval()  # a probe, not a training step (hooks that count training forwards ignore it)
    with torch.no_grad():
        probe = student.logits(make_batch(student, train, np.arange(min(2, len(train))), cfg.max_length))
    if probe.shape[-1] != cached.shape[-1]:
        raise CompressError(f"the teacher has {cached.shape[-1]} outputs and the student {probe.shape[-1]}",
                            "give both models the same number of labels")
    cached = torch.from_numpy(cached)
    mapped = layer_map(student, teacher, cfg) if cfg.hidden_weight > 0 or cfg.attention_weight > 0 else []
    extra = {}
    if cfg.hidden_weight > 0 and student.module.config.hidden_size != teacher.module.config.hidden_size:
        extra["projection"] = torch.nn.Linear(student.module.config.hidden_size, teacher.module.config.hidden_size)

    def loss_fn(objective, batch):
        nonlocal cached
        cached = cached.to(batch["index"].device)
        want_hidden, want_attn = cfg.hidden_weight > 0, cfg.attention_weight > 0
        if student.takes_tokens:
            inputs = {k: batch[k] for k in student.input_names if k in batch}
            out = objective.student(**inputs, output_hidden_states=want_hidden, output_attentions=want_attn)
            logits = out.logits
        elif student.is_hf:  # vision: (B, C, H, W) pixels
            logits = objective.student(pixel_values=batch["inputs"]).logits
        else:
            logits = objective.student(batch["inputs"])
        loss, parts = distillation_loss(logits.float(), cached[batch["index"]], batch.get("labels"),
                                        cfg.temperature, cfg.alpha)
        if mapped:
            with torch.no_grad():
                teacher.module.to(logits.device)
                t_out = teacher.module(**inputs, output_hidden_states=want_hidden, output_attentions=want_attn)
            if want_hidden:  # hidden_states[0] is the embedding output, layer i's output is [i + 1]
                h = hidden_state_loss([out.hidden_states[i + 1] for i in range(len(mapped))],
                                      [t_out.hidden_states[m + 1] for m in mapped], batch["attention_mask"],
                                      objective.extra["projection"] if "projection" in objective.extra else None)
                loss, parts["hidden"] = loss + cfg.hidden_weight * h, h.detach()
            if want_attn:
                a = attention_loss(list(out.attentions), [t_out.attentions[m] for m in mapped], batch["attention_mask"])
                loss, parts["attention"] = loss + cfg.attention_weight * a, a.detach()
        return loss, parts

    if callback is None and progress:
        callback = RichProgress("distill")
    metrics = fit(student, objective_module(student.module, loss_fn, **extra), train, cfg, workdir,
                  eval_examples=eval_examples, callback=callback)
    teacher.module.to("cpu")
    return {**metrics, "layer_map": mapped or None, "student_params": student.num_parameters(),
            "teacher_params": teacher.num_parameters()}

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

import copy
import hashlib
import logging
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from compress import inference
from compress.artifacts import TorchModel
from compress.data import iter_batches, text_lengths
from compress.errors import CompressError
from compress.modules import renumber_layers, swap_module
from compress.paths import cache_root, write_atomic
from compress.train import RichProgress, TrainConfig, fit, make_batch, objective_module, process_state

log = logging.getLogger(__name__)


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
    # Causal language models (token-level KD, `compress.causal_distillation`):
    block_size: int = Field(256, ge=8, description="Causal LMs: tokens per packed training block.")
    max_blocks: int | None = Field(None, ge=1, description="Causal LMs: at most this many training blocks (None = all).")
    eval_blocks: int = Field(32, ge=1, description="Causal LMs: held-out blocks whose perplexity picks the best epoch.")
    teacher_logits: Literal["topk", "online"] = Field(
        "topk", description="Causal LMs: topk = the teacher's top-k log-probabilities cached once (KL over k tokens "
        "plus the merged tail); online = a full-vocabulary teacher pass every step.")
    top_k: int = Field(64, ge=1, description="Causal LMs: tokens per position kept in the teacher cache.")


# --- losses (pure functions) -------------------------------------------------------------------------------


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE(labels, s), KL averaged over the batch.

    T² keeps the KL gradients on the same scale as CE's when T changes (Hinton et al., 2015).
    Returns `(loss, {"kd": ..., "ce": ...})`; `labels` may be None only when alpha == 1.
    """
    import torch
    from torch.nn import functional as F

    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)  # (B, C)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    kd = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2
    if alpha < 1:
        if labels is None:
            raise CompressError("alpha < 1 needs labels", "pass labelled data or alpha 1")
        ce = F.cross_entropy(student_logits, labels)
    else:
        ce = torch.zeros((), device=student_logits.device)
    return alpha * kd + (1 - alpha) * ce, {"kd": kd.detach(), "ce": ce.detach()}


def hidden_state_loss(student_hidden, teacher_hidden, attention_mask, projection=None):
    """Mean over mapped layers of the MSE between (projected) student and teacher token vectors, real tokens only.

    Args:
        student_hidden / teacher_hidden: lists of (B, T, H_s) / (B, T, H_t), one per mapped layer pair.
        attention_mask: (B, T), 1 on real tokens.
        projection: module mapping H_s -> H_t, or None when the widths match.
    """
    mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
    total = 0.0
    for h_s, h_t in zip(student_hidden, teacher_hidden, strict=True):
        if projection is not None:
            h_s = projection(h_s)  # (B, T, H_s) -> (B, T, H_t)
        total = total + (((h_s.float() - h_t.float()) ** 2) * mask).sum() / (mask.sum() * h_t.shape[-1])
    return total / len(student_hidden)


def attention_loss(student_attn, teacher_attn, attention_mask):
    """Mean over mapped layers of the MSE between attention maps (B, heads, T, T) on real query rows; when head
    counts differ the maps are averaged over heads first."""
    rows = attention_mask[:, None, :, None].float()  # (B, 1, T, 1): padded queries do not count
    total = 0.0
    for a_s, a_t in zip(student_attn, teacher_attn, strict=True):
        if a_s.shape[1] != a_t.shape[1]:
            a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
        diff = ((a_s.float() - a_t.float()) ** 2) * rows
        total = total + diff.sum() / (rows.sum() * a_s.shape[1] * a_s.shape[-1])
    return total / len(student_attn)


# --- students ----------------------------------------------------------------------------------------------


def select_layers(n_teacher: int, k: int) -> list[int]:
    """K evenly spaced layer indices of `n_teacher`, always ending with the last: 6 -> 3 gives [1, 3, 5]."""
    if not 1 <= k <= n_teacher:
        raise CompressError(f"cannot keep {k} of {n_teacher} layers", f"pass a student size from 1 to {n_teacher}")
    return [int(np.floor((i + 1) * n_teacher / k + 0.5)) - 1 for i in range(k)]


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


def derive_student(teacher: TorchModel, k: int, layers: list[int] | None = None) -> TorchModel:
    """A copy of `teacher` keeping embeddings, head and K of its layers (DistilBERT-style initialisation).

    Args:
        teacher: a Hugging Face model (left unchanged).
        k: layers to keep.
        layers: which ones (0-based); default `select_layers(n, k)`.
    """
    if not teacher.is_hf:
        raise CompressError(f"cannot derive a student from {type(teacher.module).__name__}: --student-layers needs a "
                            "Hugging Face transformer teacher", "give a student model for plain PyTorch modules")
    from torch import nn

    module = copy.deepcopy(teacher.module)
    if getattr(module.config, "model_type", "") == "albert":
        return _albert_student(teacher, module, k)
    name, blocks = layer_list(module)
    layers = layers or select_layers(len(blocks), k)
    if len(layers) != k or max(layers) >= len(blocks):
        raise CompressError(f"layers {layers} do not pick {k} of the teacher's {len(blocks)}", "check --layer-map")
    swap_module(module, name, nn.ModuleList([blocks[i] for i in layers]))
    module.requires_grad_(True)
    module.config.num_hidden_layers = k  # saved configs rebuild K layers; state-dict keys renumber 0..K-1
    renumber_layers(module.get_submodule(name))
    return TorchModel(module, teacher.task, tokenizer=teacher.tokenizer, surgery=list(teacher.surgery),
                      source=f"{teacher.source} [layers {','.join(map(str, layers))}]")


def _albert_student(teacher: TorchModel, module, k: int) -> TorchModel:
    """ALBERT shares one layer's weights across all `num_hidden_layers` passes: the student runs it K times
    (same weights and parameters, K/N of the encoder's compute), so only the config changes."""
    n = module.config.num_hidden_layers
    if not 1 <= k <= n:
        raise CompressError(f"cannot keep {k} of {n} layers", f"pass a student size from 1 to {n}")
    module.config.num_hidden_layers = k
    module.requires_grad_(True)
    return TorchModel(module, teacher.task, tokenizer=teacher.tokenizer, surgery=list(teacher.surgery),
                      source=f"{teacher.source} [{k} of {n} shared-layer passes]")


def prepare_student(teacher: TorchModel, student: TorchModel | None, cfg: DistillSettings) -> TorchModel:
    """The student to train: `student` as given, or the teacher cut to `cfg.student_layers` layers."""
    if student is not None and cfg.student_layers:
        raise CompressError("both a student model and --student-layers were given", "pass one of them")
    if student is None:
        if not cfg.student_layers:
            raise CompressError("no student", "pass a student model or a layer count (e.g. `compress distill TEACHER 3`)")
        student = derive_student(teacher, cfg.student_layers, cfg.layer_map)
    return student


# --- teacher logits, cached --------------------------------------------------------------------------------


def default_cache_dir(kind: str = "teacher-logits") -> Path:
    """`cache_root()/<kind>`: shared across runs, stages and search trials, so every student distilled from one
    teacher on one transfer set reuses one teacher pass. Entries are keyed by the teacher's weights and the data,
    so sharing cannot mix two teachers."""
    return cache_root() / kind


def fingerprint(model: TorchModel) -> str:
    """sha256 of a model's weights (names, shapes, bytes): the teacher part of the cache key."""
    h = hashlib.sha256()
    for name, tensor in model.module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(examples, max_length: int) -> str:
    """sha256 of the inputs (texts, pairs or arrays) and truncation length: the data part of the cache key."""
    h = hashlib.sha256(f"max_length={max_length}".encode())
    for xs in (examples.texts, examples.text_pairs):
        if xs is not None:
            for x in xs:
                h.update(x.encode() + b"\x00")
    if examples.inputs is not None:
        h.update(np.ascontiguousarray(examples.inputs).tobytes())
    return h.hexdigest()


def teacher_logits(teacher: TorchModel, examples, max_length: int, cache_dir: Path, batch_size: int = 64) -> np.ndarray:
    """(N, C) float32 teacher logits of `examples`, computed once and kept in `cache_dir` (keyed by hashes)."""

    key = f"{fingerprint(teacher)[:16]}-{data_fingerprint(examples, max_length)[:16]}"
    path = Path(cache_dir) / f"teacher-logits-{key}.npy"
    with process_state().main_process_first():  # the first process computes, the others read its file
        if path.exists():
            log.info("teacher logits from cache %s", path)
            return np.load(path)
        # Shortest first: random order pads every batch to its longest text (3x the work on SST-2 phrases).
        lengths = text_lengths(examples)
        order = np.arange(len(examples)) if lengths is None else np.argsort(lengths, kind="stable")
        sorted_logits, _ = inference.predict(teacher, iter_batches(teacher, examples, batch_size, max_length,
                                                                   order=order))
        logits = np.empty_like(sorted_logits)
        logits[order] = sorted_logits
        logits = logits.astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: np.save(tmp, logits), suffix=".npy")
        return logits


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

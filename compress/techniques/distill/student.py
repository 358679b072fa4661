"""Students derived from the teacher: a subset of its layers, copied."""

from __future__ import annotations

import copy

import numpy as np

from compress.core.errors import CompressError
from compress.models.anatomy import layer_list
from compress.models.artifacts import TorchModel
from compress.models.modules import renumber_layers, swap_module
from compress.techniques.distill.config import DistillSettings


def select_layers(n_teacher: int, k: int) -> list[int]:
    """K evenly spaced layer indices of `n_teacher`, always ending with the last: 6 -> 3 gives [1, 3, 5]."""
    if not 1 <= k <= n_teacher:
        raise CompressError(f"cannot keep {k} of {n_teacher} layers", f"pass a student size from 1 to {n_teacher}")
    return [int(np.floor((i + 1) * n_teacher / k + 0.5)) - 1 for i in range(k)]


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
    check_student(student, cfg)
    if student is None:
        student = derive_student(teacher, cfg.student_layers, cfg.layer_map)
    return student


def check_student(student: TorchModel | None, cfg: DistillSettings) -> None:
    """Exactly one of a student model and `cfg.student_layers` is given."""
    if student is not None and cfg.student_layers:
        raise CompressError("both a student model and --student-layers were given", "pass one of them")
    if student is None and not cfg.student_layers:
        raise CompressError("no student", "pass a student model or a layer count (e.g. `compress distill TEACHER 3`)")

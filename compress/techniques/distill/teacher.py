"""The teacher's outputs, computed once and cached on disk by model and data fingerprint."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from compress.core.paths import cache_root, write_atomic
from compress.data.examples import iter_batches, text_lengths
from compress.models.artifacts import TorchModel
from compress.runtime import predict
from compress.training.loop import process_state

log = logging.getLogger(__name__)


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
        sorted_logits, _ = predict.predict(teacher, iter_batches(teacher, examples, batch_size, max_length,
                                                                   order=order))
        logits = np.empty_like(sorted_logits)
        logits[order] = sorted_logits
        logits = logits.astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: np.save(tmp, logits), suffix=".npy")
        return logits

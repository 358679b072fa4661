"""One pass on one model, as a one-stage pipeline: the engine behind `compress prune|quantize|train|export`.

The command loads the model and data; `apply_pass` runs the registered pass with a work folder beside the output
(so an interrupted training run resumes from its checkpoint), then writes the output folder atomically: the model
(PyTorch: safetensors/state dict + manifest; ONNX: the exported or quantized folder) and a JSON record of the pass.
The recipe runner keeps its artifacts with the same `keep_onnx` rule.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from compress.core.paths import guard_output
from compress.models.artifacts import MANIFEST_FILE, OnnxModel, TorchModel
from compress.passes.base import DataBundle, PassConfig, PassContext, PassResult, get_pass
from compress.training.loop import process_state, save_trained

RECORD_FILE = "compress_pass.json"


def workdir_for(output: Path) -> Path:
    """Checkpoints live beside the output folder, which is only written (atomically) at the end."""
    return output.parent / f".{output.name}.work"


def apply_pass(model: TorchModel | OnnxModel, cfg: PassConfig, output: str | Path, *, data: DataBundle | None = None,
               teacher: TorchModel | None = None, record: dict[str, Any] | None = None,
               record_file: str = RECORD_FILE, metrics_key: str | None = "metrics", progress: bool = True,
               cache_dir: Path | None = None, on_progress=None) -> PassResult:
    """Run pass `cfg.type` on `model` and save its output model to `output` atomically.

    Args:
        model: the loaded input model (never modified by a pass that edits a copy).
        cfg: the pass config (its `type` names the registered pass).
        output: the folder written at the end; it appears complete or not at all.
        data: train / eval / calibration examples for the pass.
        teacher: the reference model of distillation passes.
        record: what the JSON record holds besides the pass's metrics (default: pass, config, source).
        record_file: the record's file name inside `output`.
        metrics_key: the record key that holds the pass's metrics; None merges them into the record.
        progress: show the pass's progress bars.
        cache_dir: where teacher outputs are cached (distillation; default under $COMPRESS_CACHE).
        on_progress: callback(stage, done, total) for the pass's progress.
    """
    output = Path(output)
    info = get_pass(cfg.type)
    # A single command asks for the quality figures its data allows (a pipeline scores stages itself).
    ctx = PassContext(teacher=teacher, data=data or DataBundle(), workdir=workdir_for(output), progress=progress,
                      cache_dir=cache_dir, on_progress=on_progress, score_eval=True)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    result = info.fn(model, cfg, ctx)
    if not process_state().is_main_process:  # the other training processes hold the same weights
        return result
    head = record if record is not None else {"pass": cfg.type, "config": cfg.model_dump(mode="json"),
                                               "source": getattr(model, "source", "")}
    body = {**head, metrics_key: result.metrics} if metrics_key else {**head, **result.metrics}
    save_output(result.model, output, body, record_file)
    shutil.rmtree(ctx.workdir, ignore_errors=True)
    return result


def save_output(model: TorchModel | OnnxModel, output: Path, record: dict, record_file: str = RECORD_FILE) -> Path:
    """Write `model` and its JSON record into `output`, replacing it as a whole (temp folder, then rename)."""
    if isinstance(model, TorchModel):
        out = save_trained(model, output, record)  # the model, and the record as metrics.json
        if record_file != "metrics.json":
            os.replace(out / "metrics.json", out / record_file)
        return out
    guard_output(output, [model.source])
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    keep_onnx(model, tmp, into="", move=True)
    (tmp / record_file).write_text(json.dumps(record, indent=2, default=str))
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
    model.path = output / model.path.name
    return output


def keep_onnx(out: OnnxModel, folder: Path, into: str = "model", move: bool = False) -> dict:
    """Make `folder` hold the ONNX model `out` with what reloading it needs (tokenizer, task manifest): a model
    already inside `folder` stays where it is, one elsewhere is copied (or, with `move`, moved: a work folder's
    output) into `folder/into`. Returns the artifact record {"kind": "onnx", "path": the .onnx file relative to
    `folder`}."""
    source = out.path.parent.resolve()
    if folder.resolve() not in source.parents and source != folder.resolve():
        if move:
            for item in source.iterdir():
                (folder / into).mkdir(parents=True, exist_ok=True)
                shutil.move(str(item), folder / into / item.name)
        else:
            shutil.copytree(source, folder / into, dirs_exist_ok=True)
        source = (folder / into).resolve()
    if out.tokenizer is not None and not (source / "tokenizer_config.json").exists():
        out.tokenizer.save_pretrained(source)
    if not (source / MANIFEST_FILE).exists():
        (source / MANIFEST_FILE).write_text(json.dumps({"format": 1, "task": out.task, "input_names": out.input_names}))
    return {"kind": "onnx", "path": str((source / out.path.name).relative_to(folder.resolve()))}


def load_check_examples(model, data: str | None, split: str | None = None, text_field: str = "text",
                        text_pair_field: str | None = None, limit: int | None = None, *, label_field: str = "label",
                        limit_texts: bool = True):
    """Real inputs for a command's checks (export parity, quantization budgets): labelled-or-not examples for
    classifiers; for causal LMs the texts of any text source, `.txt` files included (cut to `limit` only with
    `limit_texts`: a decoder's budget counts blocks, not texts). None without `data`."""
    from compress.data.causal import TextSource, load_texts
    from compress.data.examples import DataSpec, Examples, load_examples
    from compress.models.causal import is_causal

    if not data:
        return None
    if is_causal(model):
        texts = load_texts(TextSource(data, split=split, text_field=text_field))
        return Examples(texts=texts[: limit or None] if limit_texts else texts)
    return load_examples(DataSpec(source=data, split=split, text_field=text_field, text_pair_field=text_pair_field,
                                  label_field=label_field, limit=limit))

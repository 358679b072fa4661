"""PyTorch -> ONNX (dynamic batch and sequence axes), optional ORT graph optimization and `.ort` format,
always validated against PyTorch on real inputs (max |Δlogits| and argmax agreement)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from compress.core.errors import CompressError
from compress.models.artifacts import MANIFEST_FILE, OnnxModel, TorchModel

log = logging.getLogger(__name__)

EXPORTERS = ("auto", "torchscript", "dynamo")
OPTIMIZATIONS = ("none", "ort", "transformer")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes (dynamo's errors carry them)
DEFAULT_OPSET = 17  # the legacy exporter's best-tested opset; ORT's BERT fusions match it


@dataclass
class Parity:
    """How close an exported model is to PyTorch on the same real inputs."""

    max_abs_diff: float
    argmax_agreement: float
    examples: int

    def ok(self, atol: float) -> bool:
        return self.max_abs_diff <= atol and self.argmax_agreement == 1.0


@dataclass
class ExportResult:
    """What `export_onnx` wrote and how it was checked."""

    model: OnnxModel
    exporter: str
    opset: int
    parity: Parity
    ort_path: Path | None = None
    input_shape: tuple | None = None  # one example's shape, for vision/plain models
    input_shape_source: str | None = None  # where it came from: config, first layer, or --input-shape


def export_onnx(model: TorchModel, out_dir: str | Path, *, check_batches: list[dict] | None = None,
                opset: int = DEFAULT_OPSET, exporter: str = "auto", optimize: str = "none",
                ort_format: bool = False, atol: float = 1e-4) -> ExportResult:
    """Export `model` to `out_dir/model.onnx` with config and tokenizer beside it, and check parity.

    Args:
        model: the PyTorch model (not modified).
        out_dir: output folder; written atomically (a temporary folder renamed at the end).
        check_batches: real input batches for the parity check (default: built-in sample sentences/digits).
        opset: ONNX opset.
        exporter: "torchscript" (legacy, fast, fuses best in ORT), "dynamo", or "auto" (torchscript, then dynamo).
        optimize: "none", "ort" (ONNX Runtime offline graph optimization) or "transformer"
            (onnxruntime.transformers fusions: Attention, SkipLayerNorm, BiasGelu; BERT-family models).
        ort_format: also write `model.ort` (ORT format for mobile / minimal builds), parity-checked too.
        atol: tolerance on max |Δlogits|; above it (or any argmax disagreement) the export fails.
    """
    if exporter not in EXPORTERS:
        raise CompressError(f"unknown exporter '{exporter}'", f"use one of: {', '.join(EXPORTERS)}")
    if optimize not in OPTIMIZATIONS:
        raise CompressError(f"unknown optimization '{optimize}'", f"use one of: {', '.join(OPTIMIZATIONS)}")
    from compress.core.paths import guard_output

    out_dir = Path(out_dir)
    guard_output(out_dir, [model.source])  # never over, into or around the model being exported
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    batches = check_batches or default_check_batches(model)
    shape, shape_source = (None, None)
    if not model.takes_tokens:  # say which input shape the graph was traced and checked with
        shape = tuple(batches[0]["inputs"].shape[1:])
        shape_source = "from the parity-check data" if check_batches else model.example_shape()[1]
    onnx_path = tmp / "model.onnx"
    used = _export_graph(model, onnx_path, batches[0], opset, exporter)
    opset = _graph_opset(onnx_path)  # dynamo needs >= 18 and may raise the requested opset
    if optimize != "none":
        _optimize(model, onnx_path, optimize)
    _write_side_files(model, tmp, used, opset, optimize, shape)
    onnx_model = OnnxModel(onnx_path, model.task, tokenizer=model.tokenizer, input_names=model.input_names,
                           source=model.source)
    parity = check_parity(model, onnx_model, batches)
    if not parity.ok(atol):
        raise CompressError(
            f"ONNX export differs from PyTorch: max |Δlogits| {parity.max_abs_diff:.2e} (atol {atol:.0e}), "
            f"argmax agreement {parity.argmax_agreement:.1%} on {parity.examples} examples",
            "try --exporter dynamo or another --opset, or raise --atol if the difference is expected",
        )
    ort_path = None
    if ort_format:
        ort_path = _to_ort_format(onnx_path)
        ort_parity = check_parity(model, OnnxModel(ort_path, model.task, model.tokenizer, model.input_names), batches)
        if not ort_parity.ok(atol):
            raise CompressError(f".ort conversion changed outputs: max |Δlogits| {ort_parity.max_abs_diff:.2e}",
                                "export without --ort-format")
    report = {"exporter": used, "opset": opset, "optimize": optimize, "parity": asdict(parity), "atol": atol,
              "input_shape": list(shape) if shape else None, "input_shape_source": shape_source}
    (tmp / "export_report.json").write_text(json.dumps(report, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    final = OnnxModel(out_dir / "model.onnx", model.task, model.tokenizer, model.input_names, model.source)
    return ExportResult(final, used, opset, parity, out_dir / ort_path.name if ort_path else None, shape, shape_source)


def default_check_batches(model: TorchModel) -> list[dict]:
    """Real inputs for parity when none are given: sample sentences, or sklearn digits test images."""
    from compress.data.examples import Examples, iter_batches, load_examples, sample_texts

    if model.takes_tokens:
        return list(iter_batches(model, Examples(texts=sample_texts()), batch_size=4))
    shape, _ = model.example_shape()
    if int(np.prod(shape)) == 64:  # the digits' 8x8 pixels fit this shape: check on real images
        examples = load_examples("builtin:digits", split="test", limit=64)
        inputs = examples.inputs.reshape(len(examples.inputs), *shape)
    else:  # no real data of this shape at hand: seeded standard-normal inputs
        inputs = np.random.default_rng(0).standard_normal((16, *shape)).astype(np.float32)
    return list(iter_batches(model, Examples(inputs=inputs), batch_size=4))


def check_parity(reference: TorchModel, onnx_model: OnnxModel, batches: list[dict]) -> Parity:
    """Max |Δlogits| and argmax agreement between PyTorch and ONNX Runtime on the same batches."""
    from compress.runtime.predict import Predictor

    torch_run, ort_run = Predictor(reference), Predictor(onnx_model)
    diffs, agree, n = [], 0, 0
    for batch in batches:
        a, b = torch_run(batch), ort_run(batch)
        diffs.append(float(np.abs(a - b).max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        n += len(a)
    return Parity(max(diffs), agree / n, n)


# --- internals ---------------------------------------------------------------------------------------------


class _FirstOutput:
    """Wrap an HF model so that positional inputs map to names and only the first output comes back."""

    @staticmethod
    def wrap(model: TorchModel):
        import torch

        names = model.input_names
        module = model.module

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = module

            def forward(self, *args):
                if not model.is_hf:
                    return self.inner(*args)
                if not model.takes_tokens:  # vision: one pixel tensor
                    return self.inner(pixel_values=args[0], return_dict=False)[0]
                return self.inner(**dict(zip(names, args, strict=True)), return_dict=False)[0]

        return Wrapper().eval()


def _export_graph(model: TorchModel, path: Path, batch: dict, opset: int, exporter: str) -> str:
    """Export with the requested exporter; with "auto", fall back to dynamo if torchscript fails."""
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    errors = []
    for name in order:
        try:
            _EXPORT_FNS[name](model, path, batch, opset)
            return name
        except Exception as e:  # exporters raise many types; keep the first line of each for the message
            log.warning("%s exporter failed: %s", name, _ANSI.sub("", str(e)).splitlines()[0] if str(e) else type(e).__name__)
            first = (_ANSI.sub("", str(e)).strip().splitlines() or [""])[0]  # dynamo colours its messages
            errors.append(f"{name}: {type(e).__name__}: {first[:160]}")
            path.unlink(missing_ok=True)
    raise CompressError(f"ONNX export failed ({'; '.join(errors)})", "try another --exporter or --opset")


def _axes(model: TorchModel) -> dict:
    if model.takes_tokens:
        return {n: {0: "batch", 1: "sequence"} for n in model.input_names}
    return {"inputs": {0: "batch"}}


def _output_name(model: TorchModel) -> str:
    return "last_hidden_state" if model.task == "feature-extraction" else "logits"


def _export_torchscript(model: TorchModel, path: Path, batch: dict, opset: int) -> None:
    import torch

    args = tuple(batch[n] for n in model.input_names)
    out = _output_name(model)
    axes = {**_axes(model), out: {0: "batch"} if not model.is_hf or out == "logits" else {0: "batch", 1: "sequence"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation notice
        torch.onnx.export(_FirstOutput.wrap(model), args, str(path), dynamo=False, opset_version=opset,
                          input_names=model.input_names, output_names=[out], dynamic_axes=axes,
                          do_constant_folding=True)


def _export_dynamo(model: TorchModel, path: Path, batch: dict, opset: int) -> None:
    import torch
    from torch.export import Dim

    args = tuple(batch[n] for n in model.input_names)
    batch_dim = Dim("batch", min=1, max=4096)
    if model.takes_tokens:
        seq = Dim("sequence", min=2, max=getattr(model.module.config, "max_position_embeddings", 512))
        shapes = tuple({0: batch_dim, 1: seq} for _ in args)
    else:
        shapes = ({0: batch_dim},)
    shapes = (shapes,)  # the wrapper takes *args: one positional entry holding every input's spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_FirstOutput.wrap(model), args, dynamo=True, opset_version=max(opset, 18),
                                    input_names=model.input_names, output_names=[_output_name(model)],
                                    dynamic_shapes=shapes, verbose=False)
    program.save(str(path))  # one file: no external .data for models under 2 GB


_EXPORT_FNS = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}


def _optimize(model: TorchModel, path: Path, how: str) -> None:
    """Rewrite `path` in place with an optimized graph (still portable: no hardware-specific layouts)."""
    optimized = path.with_name("model.opt.onnx")
    if how == "ort":
        from compress.runtime.ort import make_session

        make_session(path, optimization="extended", save_optimized=optimized)
    else:
        if not model.is_hf or getattr(model.module.config, "model_type", "") not in ("bert", "roberta", "distilbert"):
            raise CompressError("--optimize transformer needs a BERT-family Hugging Face model",
                                "use --optimize ort for other models")
        from onnxruntime.transformers.optimizer import optimize_model

        cfg = model.module.config
        model_type = "bert" if cfg.model_type == "roberta" else cfg.model_type
        opt = optimize_model(str(path), model_type=model_type, num_heads=cfg.num_attention_heads,
                             hidden_size=cfg.hidden_size, opt_level=1)
        opt.save_model_to_file(str(optimized))
    optimized.replace(path)


def _graph_opset(path: Path) -> int:
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


def _to_ort_format(onnx_path: Path) -> Path:
    from compress.runtime.ort import make_session

    ort_path = onnx_path.with_suffix(".ort")
    make_session(onnx_path, optimization="basic", save_optimized=ort_path, save_format="ort")
    return ort_path


def _write_side_files(model: TorchModel, folder: Path, exporter: str, opset: int, optimize: str,
                      input_shape: tuple | None = None) -> None:
    """config.json + tokenizer (so optimum's ORTModelFor* loads the folder) and our manifest."""
    if model.is_hf:
        model.module.config.save_pretrained(folder)
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(folder)
    manifest_shape = {"input_shape": list(input_shape)} if input_shape else {}
    manifest = {**manifest_shape, "format": 1, "task": model.task, "input_names": model.input_names, "exporter": exporter,
                "opset": opset, "optimize": optimize, "builder": model.builder, "builder_kwargs": model.builder_kwargs}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))

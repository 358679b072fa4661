"""The classifier flow: quantize a model to int8 (dynamic or static QDQ) or fp16 with ORT, and publish the folder."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from compress.core.errors import CompressError
from compress.models.artifacts import MANIFEST_FILE, OnnxModel, TorchModel
from compress.techniques.quantize.config import QuantizeSettings, check_inputs
from compress.techniques.quantize.graph import count_ops, load_graph, match_exclusions, quantizable_nodes
from compress.techniques.quantize.hardware import provider_check
from compress.techniques.quantize.result import SETTINGS_FILE, SETTINGS_FORMAT, QuantizeResult
from compress.techniques.quantize.sensitivity import accuracy_drop, make_scorer, search_units
from compress.techniques.quantize.variants import Plan, make_plan, make_variant

# Files that a model folder keeps beside model.onnx (optimum's ORTModelFor* needs config.json + tokenizer).
SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
              "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json",
              MANIFEST_FILE)


def quantize(model: TorchModel | OnnxModel, out_dir: str | Path, cfg: QuantizeSettings, *, calibration=None,
             eval_examples=None, work_dir: str | Path | None = None,
             on_progress: Callable[[str, int, int], None] | None = None) -> QuantizeResult:
    """Quantize `model` with ONNX Runtime into `out_dir` (model.onnx + quantization.json + config/tokenizer).

    Args:
        model: a TorchModel (exported first with parity checks) or an OnnxModel (fp32).
        out_dir: output folder, written atomically; an optimum `ORTModelFor*` folder for HF models.
        cfg: the `QuantizeSettings` (mode, types, calibration, exclusions, budget...).
        calibration: `Examples` for static mode (first `cfg.calibration_samples` are used).
        eval_examples: labelled `Examples` for the accuracy budget and sensitivity (`cfg.max_drop`).
        work_dir: where temporary graphs go (default: system temp).
        on_progress: callback(stage, done, total) for progress bars.
    """
    started = time.perf_counter()
    check_inputs(cfg, calibration, eval_examples)
    out_dir = Path(out_dir)
    if isinstance(model, OnnxModel) and out_dir.resolve() == model.folder.resolve():
        raise CompressError(f"the output folder '{out_dir}' holds the input model", "pass another --output")
    progress = on_progress or (lambda *a: None)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp_name:
        tmp = Path(tmp_name)
        progress("prepare", 0, 1)
        fp32 = _as_onnx(model, tmp / "fp32", eval_examples)
        plan, fused = make_plan(cfg, fp32, tmp, calibration)
        progress("prepare", 1, 1)
        proto = load_graph(plan.src)
        graph = proto.graph
        nodes = quantizable_nodes(proto, plan.op_types) if cfg.mode != "fp16" else [n.name for n in graph.node]
        plan.nodes = nodes
        matched = match_exclusions(cfg.exclude, [n.name for n in graph.node], nodes)
        user_excluded = sorted({n for hits in matched.values() for n in hits})
        excluded = [{"node": n, "reason": "user --exclude " + ", ".join(repr(p) for p, h in matched.items() if n in h)}
                    for n in user_excluded]
        progress("quantize", 0, 1)
        chosen = make_variant(plan, tmp / "candidate.onnx", user_excluded)
        progress("quantize", 1, 1)
        metrics: dict = {}
        warnings: list[str] = []
        if cfg.max_drop is not None:
            def interim(path: Path, step: int) -> None:
                # The best model so far is always on disk: an interrupted search still leaves a usable result.
                staged = _stage(path, fp32, cfg, tmp / f"interim_{step}")
                _write_json(staged / SETTINGS_FILE, {"format": SETTINGS_FORMAT, "partial": True, "search_step": step,
                                                     "config": cfg.model_dump(mode="json")})
                _publish(staged, out_dir, fp32)
                shutil.rmtree(staged)

            interim(chosen, 0)
            chosen, search = search_units(cfg, plan, graph, nodes, user_excluded, fp32, eval_examples, tmp,
                                          chosen, progress, interim)
            excluded += search.pop("excluded")
            metrics.update(search)
            if not metrics["budget_met"]:
                warnings.append(f"accuracy budget {cfg.max_drop:.2%} not met: best drop {metrics['drop']:.2%} "
                                f"(kept in fp32: {', '.join(metrics['kept_fp32_units']) or 'nothing'}); "
                                "the best model found is written")
        elif eval_examples is not None and eval_examples.labels is not None:
            scorer, fp32_scores = make_scorer(fp32, eval_examples, cfg.eval_samples)
            m = scorer(chosen)
            metrics.update({"accuracy_fp32": fp32_scores["accuracy"], "accuracy": m["accuracy"],
                            "drop": accuracy_drop(fp32_scores, m), "sqnr_db": m["sqnr_db"], "mean_kl": m["mean_kl"]})
        staged = _stage(chosen, fp32, cfg, tmp / "out")
        feed = _first_batch(fp32, eval_examples)
        providers, ep_warnings = provider_check(staged / "model.onnx", cfg.mode, cfg.device, feed)
        warnings += ep_warnings
        counts = count_ops(staged / "model.onnx")
        size_fp32, size_q = fp32.size_bytes(), (staged / "model.onnx").stat().st_size
        metrics.update({
            "quantized_matmuls": counts["quantized_matmuls"], "float_matmuls": counts["float_matmuls"],
            "quantizable_nodes": len(nodes), "excluded_nodes": len({e["node"] for e in excluded}),
            "size_fp32_mb": round(size_fp32 / 1e6, 3), "size_mb": round(size_q / 1e6, 3),
            "size_ratio": round(size_q / size_fp32, 4), "providers": providers,
            "seconds": round(time.perf_counter() - started, 2),
        })
        settings = _settings(cfg, plan, fused, excluded, metrics, counts)
        settings["warnings"] = warnings
        _write_json(staged / SETTINGS_FILE, settings)
        final = _publish(staged, out_dir, fp32)
        metrics["settings"] = settings["resolved"]
        metrics["excluded"] = excluded
        return QuantizeResult(final, settings, metrics, warnings)


def _as_onnx(model, out: Path, eval_examples) -> OnnxModel:
    """The fp32 ONNX model: exported (with parity) from a TorchModel, or the given OnnxModel, checked."""
    if isinstance(model, OnnxModel):
        if model.path.suffix != ".onnx":
            raise CompressError(f"cannot quantize '{model.path}' (.ort files are already converted)",
                                "pass the .onnx model")
        load_graph(model.path)  # a clear error for files that are not models
        return model
    from compress.data.examples import iter_batches
    from compress.export.onnx import export_onnx

    batches = None
    if eval_examples is not None and model.task != "feature-extraction":
        batches = list(iter_batches(model, eval_examples.subset(np.arange(min(32, len(eval_examples)))), 16))
    return export_onnx(model, out, check_batches=batches).model


def _first_batch(fp32: OnnxModel, eval_examples) -> dict | None:
    from compress.data.examples import Examples, iter_batches, sample_texts

    if eval_examples is not None and len(eval_examples):
        examples = eval_examples.subset(np.arange(min(4, len(eval_examples))))
    elif fp32.tokenizer is not None:
        examples = Examples(texts=sample_texts()[:4])
    else:
        return None
    try:
        return next(iter_batches(fp32, examples, 4))
    except CompressError:
        return None


def _stage(chosen: Path, fp32: OnnxModel, cfg: QuantizeSettings, staging: Path) -> Path:
    """Assemble the output folder: model.onnx (+ model.ort), the fp32 folder's config, tokenizer and manifest."""
    staging.mkdir()
    shutil.copyfile(chosen, staging / "model.onnx")
    for name in SIDE_FILES:
        if (fp32.folder / name).is_file():
            shutil.copyfile(fp32.folder / name, staging / name)
    manifest_path = staging / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {
        "format": 1, "task": fp32.task, "input_names": fp32.input_names}
    manifest["quantization"] = SETTINGS_FILE
    manifest_path.write_text(json.dumps(manifest, indent=2))
    if cfg.ort_format:
        from compress.runtime.ort import make_session

        make_session(staging / "model.onnx", optimization="basic", save_optimized=staging / "model.ort",
                     save_format="ort")
    return staging


def _publish(staging: Path, out_dir: Path, fp32: OnnxModel) -> OnnxModel:
    """Move the staged folder to `out_dir` atomically (copy to a sibling temp folder, then rename)."""
    from compress.models.artifacts import publish_dir

    publish_dir(staging, out_dir)
    return OnnxModel(out_dir / "model.onnx", fp32.task, fp32.tokenizer, fp32.input_names, fp32.source)


def _settings(cfg: QuantizeSettings, plan: Plan, fused: bool, excluded: list[dict], metrics: dict,
              counts: dict) -> dict:
    from importlib.metadata import version

    resolved = {"mode": cfg.mode, "format": {"dynamic": "QOperator (integer ops)", "static": "QDQ",
                                             "fp16": "float16"}[cfg.mode],
                "per_channel": cfg.per_channel if cfg.mode != "fp16" else None,
                "op_types": plan.op_types, "optimized": "transformer" if fused else "none",
                "excluded_nodes": sorted({e["node"] for e in excluded}), **{k: v for k, v in plan.types.items()}}
    if cfg.mode == "static":
        resolved["calibration_method"] = cfg.calibration_method
        if cfg.calibration_method == "percentile":
            resolved["percentile"] = cfg.percentile
    return {"format": SETTINGS_FORMAT, "config": cfg.model_dump(mode="json"), "resolved": resolved,
            "excluded": excluded, "ops": counts["ops"],
            "metrics": {k: v for k, v in metrics.items() if k not in ("settings", "excluded")},
            "versions": {p: version(p) for p in ("onnxruntime", "onnx")}}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    tmp.replace(path)

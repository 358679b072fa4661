"""ONNX Runtime quantization: dynamic int8, calibrated static int8 (QDQ) and fp16, with per-layer sensitivity,
an accuracy budget and execution-provider checks. The library behind pass `quantize_ort` and `compress quantize`.

Measured traps this module is built around (shared/notes/toolchain.md §4-7, §9-10):
- dynamic int8 with per-channel S8 weights keeps MiniLM's outputs (cosine 0.99); per-tensor loses more;
- static QDQ of every op collapses a transformer (cosine ~0.4): the transformer-safe default quantizes only
  MatMul/Gemm with a constant weight, activations stay fp32 everywhere else;
- graphs fused by `onnxruntime.transformers` need `DefaultTensorType=FLOAT` to quantize;
- `quant_pre_process` needs `skip_symbolic_shape=True` on these exports;
- the CUDA execution provider has no kernels for the int8 ops and silently runs them on CPU
  (onnxruntime issues #9115, #10267): count nodes per provider before claiming a GPU result.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import CompressError
from compress.models.artifacts import MANIFEST_FILE, OnnxModel, TorchModel

# `cfg` below is a `compress.passes.quantize.QuantizeOrtConfig`; the machinery reads its fields and never
# imports the pass layer above it (not even for type checking: that would be an import cycle).
QuantizeOrtConfig = Any

log = logging.getLogger(__name__)

SETTINGS_FILE = "quantization.json"
CALIBRATION_FILE = "calibration.json"
SETTINGS_FORMAT = 1
# Files that a model folder keeps beside model.onnx (optimum's ORTModelFor* needs config.json + tokenizer).
SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
              "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json",
              MANIFEST_FILE)

# Transformer-safe op types. Dynamic: ORT's integer ops, incl. fused Attention/EmbedLayerNorm and the embedding
# Gather (most of the bytes). Static: only MatMul/Gemm with a constant weight (outputs left fp32) and embedding
# Gathers: every other QDQ pair (Add, Softmax, LayerNorm, activation x activation MatMul) is where accuracy
# collapses (MiniLM pooled cosine 0.39 with all ops; 0.985 with these, 200 SST-2 sentences).
DEFAULT_OP_TYPES = {
    "dynamic": ["MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization"],
    "static": ["MatMul", "Gemm", "Gather"],
    "fp16": [],  # every op converted; exclusions go to the fp16 block list
}
# Nodes that compute a matrix product in integer arithmetic (QOperator form) or float after int8 weights.
INT_MATMUL_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm",
                  "QAttention"}
FLOAT_MATMUL_OPS = {"MatMul", "Gemm", "Attention"}
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
SENSITIVITY_BATCH = 64  # eval batch size while searching (dynamic padding per batch)


@dataclass
class QuantizeResult:
    """What `quantize` wrote and measured.

    Args:
        model: the written model (int8 or fp16 ONNX) in the output folder.
        settings: the JSON saved beside it (config, resolved settings, exclusions, metrics).
        metrics: flat-ish facts for pass records and reports (see `quantize`).
        warnings: one-line warnings for the user (execution provider fallback, budget not met...).
    """

    model: OnnxModel
    settings: dict
    metrics: dict
    warnings: list[str] = field(default_factory=list)


# --- CPU flags -> weight type and reduce_range -----------------------------------------------------------------


def cpu_int8_profile() -> dict:
    """CPU model and the instruction-set flags that decide int8 kernels: VNNI (avx512_vnni/avx_vnni/amx_int8)."""
    import platform

    cpu, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    wanted = ("avx2", "avx512f", "avx512bw") + VNNI_FLAGS
    return {"cpu": cpu, "flags": [f for f in wanted if f in flags], "vnni": any(f in flags for f in VNNI_FLAGS),
            "machine": platform.machine()}


def resolve_int8_types(cfg: QuantizeOrtConfig, cpu: dict) -> dict:
    """Weight/activation types and reduce_range from the config, 'auto' decided from the CPU flags (with reasons)."""
    weight = cfg.weight_type
    if weight == "auto":
        weight = "qint8"
        weight_reason = "auto: S8 weights (U8 weights are slower and less accurate on x86, toolchain.md §4)"
    else:
        weight_reason = "set by the user"
    if cfg.reduce_range is None:
        reduce = not cpu["vnni"]
        reduce_reason = ("auto: no VNNI on this CPU, so 7-bit weights avoid int16 saturation in the AVX2 U8S8 "
                         "kernels" if reduce else "auto: VNNI present, full 8-bit weights")
    else:
        reduce, reduce_reason = cfg.reduce_range, "set by the user"
    return {"weight_type": weight, "activation_type": "quint8", "reduce_range": reduce,
            "reasons": {"weight_type": weight_reason, "reduce_range": reduce_reason,
                        "activation_type": "U8 activations: S8S8 is ~1.5x slower than fp32 without VNNI (§4)"}}


# --- graph inspection ----------------------------------------------------------------------------------------------


def load_graph(path: Path):
    """The ONNX graph at `path`; CompressError when the file is not a model."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as e:  # DecodeError / ValueError for files that are not ONNX
        raise CompressError(f"'{path}' is not an ONNX model ({type(e).__name__})",
                            "pass a model folder, a .pt with --arch, or an .onnx written by an exporter") from e
    if not model.graph.node:
        raise CompressError(f"'{path}' is not an ONNX model (empty graph)", "pass an .onnx written by an exporter")
    return model


def quantizable_nodes(model, op_types: list[str]) -> list[str]:
    """Names of nodes of `op_types` that quantization would touch: MatMul/Gemm only with a constant weight."""
    inits = {i.name for i in model.graph.initializer}
    consts = inits | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    names = []
    for node in model.graph.node:
        if op_types and node.op_type not in op_types:
            continue
        if node.op_type in ("MatMul", "Gemm") and not (len(node.input) > 1 and node.input[1] in consts):
            continue  # activation x activation (attention scores): kept fp32, as MatMulConstBOnly does
        if node.op_type == "Gather" and node.input[0] not in inits:
            continue  # shape Gathers, not embedding tables
        names.append(node.name)
    return names


def count_ops(path: Path) -> dict:
    """Quantized vs float matrix products in the graph at `path`, and all op counts.

    A MatMul/Gemm fed by a DequantizeLinear weight (QDQ form) counts as quantized: ORT fuses it to QLinearMatMul.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    from collections import Counter

    ops = Counter(n.op_type for n in graph.node)
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    qdq = sum(1 for n in graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1
              and n.input[0] in dq_outputs and n.input[1] in dq_outputs)
    int_mm = sum(ops[o] for o in INT_MATMUL_OPS)
    float_mm = sum(ops[o] for o in FLOAT_MATMUL_OPS) - qdq
    return {"quantized_matmuls": int_mm + qdq, "float_matmuls": float_mm, "qdq_matmuls": qdq,
            "ops": dict(sorted(ops.items()))}


def match_exclusions(patterns: list[str], node_names: list[str], examples: list[str] | None = None,
                     ) -> dict[str, list[str]]:
    """{pattern: matched node names} by exact name or glob; CompressError for a pattern that matches nothing."""
    matched = {}
    for pattern in patterns:
        hits = [n for n in node_names if n and (n == pattern or fnmatch.fnmatchcase(n, pattern))]
        if not hits:
            examples = ", ".join((examples or node_names)[:2])
            raise CompressError(f"--exclude '{pattern}' matches no node of the graph being quantized",
                                f"use node names or globs such as '*layer.0*' (nodes look like: {examples})")
        matched[pattern] = hits
    return matched


_LAYER = re.compile(r"(?:layers?|blocks?|h)[._/](\d+)(?=[./_]|$)")


def layer_of(texts) -> str | None:
    """"layer.3" for the first of `texts` (node name, inputs, outputs) that names a transformer layer, else None."""
    for text in texts:
        found = _LAYER.search(text)
        if found:
            return f"layer.{int(found.group(1))}"
    return None


def unit_of(node, granularity: str) -> str:
    """The sensitivity unit of a node: its transformer layer ("layer.3"), "embeddings", or the node itself."""
    if granularity == "node":
        return node.name
    layer = layer_of([node.name, *node.output, *node.input])
    if layer:
        return layer
    if any("embed" in t.lower() for t in [node.name, *node.output]):
        return "embeddings"
    return node.name


# --- calibration ---------------------------------------------------------------------------------------------------


def calibration_reader(model: OnnxModel, examples, input_names: list[str], max_length: int = 128):
    """An ORT `CalibrationDataReader` over `examples`, one example per run.

    Batch size 1 keeps padding out of the activation ranges: a padded batch feeds pad positions through every
    layer and their activations would widen (MinMax) or skew (entropy, percentile) the calibrated ranges.
    """
    from onnxruntime.quantization import CalibrationDataReader

    from compress.data.examples import iter_batches

    feeds = [{n: b[n].cpu().numpy() for n in input_names} for b in iter_batches(model, examples, 1, max_length)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds, self.pos = feeds, 0

        def get_next(self):
            if self.pos >= len(self.feeds):
                return None
            self.pos += 1
            return self.feeds[self.pos - 1]

        def rewind(self):
            self.pos = 0

        def set_range(self, start_index: int, end_index: int):
            # ORT's strided calibration (CalibStridedMinMax, any method) feeds one slice per collect call.
            self.feeds, self.pos = feeds[start_index:end_index], 0

        def __len__(self):
            return len(self.feeds)

    return Reader()


# --- one quantized variant ---------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Everything fixed for one run: source graph, resolved types, op types and the calibration cache."""

    mode: str
    src: Path
    op_types: list[str]
    types: dict
    per_channel: bool
    calibration_method: str
    percentile: float
    calibration_cache: Path | None = None
    calibration_reader: Any = None
    fused: bool = False
    nodes: list[str] = field(default_factory=list)  # the quantizable nodes (before exclusions)

    def extra_options(self) -> dict:
        import onnx

        extra = {"MatMulConstBOnly": True}
        if self.fused:
            extra["DefaultTensorType"] = onnx.TensorProto.FLOAT  # fused graphs lose some value types (§4)
        if self.mode == "static":
            # One example per collect call: examples differ in length, and ORT's histogram collectors stack
            # the arrays of one call (inhomogeneous shapes fail); histograms merge across calls.
            extra["CalibStridedMinMax"] = 1
            # Matrix-product outputs stay fp32 (DQ -> MatMul -> float, fused by ORT to MatMulIntegerToFloat):
            # a Q/DQ on every output adds error and feeds the residual Adds with 8-bit values.
            extra["OpTypesToExcludeOutputQuantization"] = ["MatMul", "Gemm"]
            if self.calibration_method == "percentile":
                extra["CalibPercentile"] = self.percentile
        return extra


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[name]


def make_variant(plan: _Plan, out: Path, exclude: list[str]) -> Path:
    """Write the model quantized (or converted to fp16) with the nodes in `exclude` kept fp32; returns `out`."""
    import onnxruntime.quantization as oq

    if plan.mode == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(plan.src)), keep_io_types=True,
                                         node_block_list=list(exclude) or None)
        onnx.save(model, str(out))
        return out
    # An explicit node list: ORT's QDQ quantizer ignores MatMulConstBOnly and would quantize the attention
    # score MatMuls (activation x activation).
    excluded = set(exclude)
    common = dict(op_types_to_quantize=plan.op_types, per_channel=plan.per_channel,
                  reduce_range=plan.types["reduce_range"], weight_type=_qtype(plan.types["weight_type"]),
                  nodes_to_quantize=_with_gemm_aliases([n for n in plan.nodes if n not in excluded]) or ["<none>"],
                  nodes_to_exclude=list(exclude), extra_options=plan.extra_options())
    _quiet_ort_logging()
    if plan.mode == "dynamic":
        oq.quantize_dynamic(str(plan.src), str(out), **common)
    else:
        methods = {"minmax": oq.CalibrationMethod.MinMax, "entropy": oq.CalibrationMethod.Entropy,
                   "percentile": oq.CalibrationMethod.Percentile}
        # The first call calibrates and caches the ranges; later variants reuse them (no second calibration).
        reader = plan.calibration_reader if not plan.calibration_cache.exists() else None
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress lines
            oq.quantize_static(str(plan.src), str(out), reader, quant_format=oq.QuantFormat.QDQ,
                               activation_type=_qtype(plan.types["activation_type"]),
                               calibrate_method=methods[plan.calibration_method],
                               calibration_cache_path=str(plan.calibration_cache), **common)
    return out


def _with_gemm_aliases(names: list[str]) -> list[str]:
    # quantize_dynamic first rewrites Gemm as MatMul + Add, naming the MatMul "<gemm name>_MatMul".
    return names + [f"{n}_MatMul" for n in names if n]


def _quiet_ort_logging() -> None:
    # ORT's quantizer logs "Please consider to run pre-processing" through the root logger on every call.
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))


# --- scoring -------------------------------------------------------------------------------------------------------


@dataclass
class _Scorer:
    """Scores candidate graphs on fixed eval batches against the fp32 reference logits (one scoring path)."""

    template: OnnxModel
    batches: list[dict]
    ref_logits: np.ndarray
    labels: np.ndarray | None

    def __call__(self, path: Path) -> dict:
        from compress.evaluation.accuracy import agreement, score
        from compress.runtime.predict import predict

        candidate = OnnxModel(path, self.template.task, self.template.tokenizer, self.template.input_names)
        logits, _ = predict(candidate, self.batches)
        out = score(logits, self.labels)
        out.update(agreement(logits, self.ref_logits))
        noise = float(((logits - self.ref_logits) ** 2).sum())
        # Identical outputs would be +inf dB; cap it so the metrics stay strict JSON (reports parse them).
        out["sqnr_db"] = min(float(10 * np.log10((self.ref_logits ** 2).sum() / noise)), 300.0) if noise > 0 else 300.0
        return out


def _make_scorer(fp32: OnnxModel, examples, limit: int | None) -> tuple[_Scorer, dict]:
    from compress.data.examples import iter_batches
    from compress.evaluation.accuracy import score
    from compress.runtime.predict import predict

    if limit is not None and limit < len(examples):
        examples = examples.subset(np.arange(limit))
    batches = list(iter_batches(fp32, examples, SENSITIVITY_BATCH))
    ref, labels = predict(fp32, batches)
    return _Scorer(fp32, batches, ref, labels), score(ref, labels)


# --- the search -----------------------------------------------------------------------------------------------------


def sensitivity(plan: _Plan, units: dict[str, list[str]], base_exclude: list[str], scorer: _Scorer, fp32: dict,
                method: str, tmp: Path, all_quantized: dict, on_progress: Callable | None = None) -> list[dict]:
    """Per-unit sensitivity rows, most sensitive first.

    method "all_but_one": quantize everything except the unit; `score` = the output KL (to fp32 logits) that keeping
    the unit fp32 removes, `score_drop` = the accuracy drop it removes;
    method "alone": quantize only the unit; `score` = its KL, `score_drop` = its accuracy drop.
    Higher score = more sensitive either way. The rank is by `score` (continuous, unlike accuracy on a few
    hundred examples); accuracy, drop, mean_kl and sqnr_db are those of the variant measured.
    """
    rows = []
    everything = [n for names in units.values() for n in names]
    for i, (unit, names) in enumerate(units.items()):
        if method == "all_but_one":
            exclude = base_exclude + names
        else:
            exclude = base_exclude + [n for n in everything if n not in names]
        path = make_variant(plan, tmp / f"sens_{i}.onnx", exclude)
        m = scorer(path)
        path.unlink()
        row = {"unit": unit, "nodes": len(names), "accuracy": m.get("accuracy"), "drop": _drop(fp32, m),
               "mean_kl": m["mean_kl"], "sqnr_db": m["sqnr_db"], "argmax_agreement": m["argmax_agreement"]}
        if method == "all_but_one":
            row["score"] = all_quantized["mean_kl"] - m["mean_kl"]
            row["score_drop"] = None if row["drop"] is None else round(_drop(fp32, all_quantized) - row["drop"], 6)
        else:
            row["score"], row["score_drop"] = m["mean_kl"], row["drop"]
        rows.append(row)
        if on_progress:
            on_progress("sensitivity", i + 1, len(units))
    rows.sort(key=lambda r: r["score"], reverse=True)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _drop(fp32: dict, m: dict) -> float | None:
    if "accuracy" not in fp32 or "accuracy" not in m:
        return None
    return round(fp32["accuracy"] - m["accuracy"], 6)


def budget_search(plan: _Plan, units: dict[str, list[str]], ranking: list[dict], base_exclude: list[str],
                  scorer: _Scorer, fp32: dict, max_drop: float, max_units: int, tmp: Path,
                  first: dict, on_progress: Callable | None = None,
                  on_better: Callable[[Path, int], None] | None = None) -> tuple[list[dict], int]:
    """Keep the most sensitive units in fp32, one more per step, until the accuracy drop is within `max_drop`.

    Returns the steps (step 0 = nothing excluded beyond the user's list) and the index of the best step:
    the first within budget, else the smallest drop (ties: fewer exclusions).
    """
    steps = [{"step": 0, "kept_fp32": None, "excluded_units": [], **_short(fp32, first)}]
    excluded: list[str] = []
    for k, row in enumerate(ranking[:max_units], 1):
        if steps[-1]["drop"] <= max_drop:
            break
        excluded.append(row["unit"])
        nodes = base_exclude + [n for u in excluded for n in units[u]]
        path = make_variant(plan, tmp / f"budget_{k}.onnx", nodes)
        steps.append({"step": k, "kept_fp32": row["unit"], "excluded_units": list(excluded),
                      "path": str(path), **_short(fp32, scorer(path))})
        if on_better and steps[-1]["drop"] < min(s["drop"] for s in steps[:-1]):
            on_better(path, k)
        if on_progress:
            on_progress("budget", k, min(max_units, len(ranking)))
    within = [i for i, s in enumerate(steps) if s["drop"] <= max_drop]
    best = within[0] if within else min(range(len(steps)), key=lambda i: (steps[i]["drop"], i))
    return steps, best


def _short(fp32: dict, m: dict) -> dict:
    return {"accuracy": m.get("accuracy"), "drop": _drop(fp32, m), "mean_kl": m["mean_kl"], "sqnr_db": m["sqnr_db"]}


# --- execution providers --------------------------------------------------------------------------------------


def provider_check(path: Path, mode: str, device: str, feed_batch: dict | None) -> tuple[dict, list[str]]:
    """Nodes per execution provider for the written model, and warnings with the GPU-appropriate alternative.

    On CUDA the int8 ops (MatMulInteger, DynamicQuantizeLinear, QLinearMatMul...) have no kernels and silently run
    on CPU (onnxruntime #9115, #10267): measured with profiling when a GPU is present, stated otherwise.
    """
    import onnxruntime as ort

    from compress.runtime.ort import cuda_available, make_session, nodes_per_provider

    report: dict = {"target_device": device, "available_providers": ort.get_available_providers()}
    warnings: list[str] = []
    trt = "TensorrtExecutionProvider" in report["available_providers"]
    alternative = ("use --mode fp16 for the CUDA provider" +
                   (", or --mode static (QDQ) for the TensorRT provider, which is installed" if trt else
                    "; QDQ (--mode static) suits the TensorRT provider when onnxruntime-gpu with TensorRT is installed"))
    measure_on = "cuda" if device == "cuda" and cuda_available() else "cpu"
    if feed_batch is not None:
        with tempfile.TemporaryDirectory() as prof:
            session = make_session(path, device=measure_on, profile_dir=prof)
            feed = {i.name: feed_batch[i.name].cpu().numpy() for i in session.get_inputs()}
            report["nodes_per_provider"] = nodes_per_provider(session, feed)
        report["measured_on"] = measure_on
    if device == "cuda" and mode in ("dynamic", "static"):
        placed = report.get("nodes_per_provider", {})
        if measure_on == "cuda" and placed.get("CPUExecutionProvider", 0):
            warnings.append(f"on CUDA, {placed['CPUExecutionProvider']} of {sum(placed.values())} nodes of this int8 "
                            f"model run on CPU (no int8 CUDA kernels): {alternative}")
        elif measure_on == "cpu":
            warnings.append("no CUDA device here to count nodes per provider; the CUDA provider has no kernels for "
                            f"these int8 ops and falls back to CPU (onnxruntime #9115, #10267): {alternative}")
    if device == "cpu" and mode == "fp16":
        warnings.append("fp16 targets GPUs: on CPU, ONNX Runtime casts around most fp16 ops and is slower than fp32; "
                        "use --mode dynamic for CPU")
    return report, warnings


# --- the whole run -----------------------------------------------------------------------------------------------


def quantize(model: TorchModel | OnnxModel, out_dir: str | Path, cfg: QuantizeOrtConfig, *, calibration=None,
             eval_examples=None, work_dir: str | Path | None = None,
             on_progress: Callable[[str, int, int], None] | None = None) -> QuantizeResult:
    """Quantize `model` with ONNX Runtime into `out_dir` (model.onnx + quantization.json + config/tokenizer).

    Args:
        model: a TorchModel (exported first with parity checks) or an OnnxModel (fp32).
        out_dir: output folder, written atomically; an optimum `ORTModelFor*` folder for HF models.
        cfg: the `QuantizeOrtConfig` (mode, types, calibration, exclusions, budget...).
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
        plan, fused = _plan(cfg, fp32, tmp, calibration)
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
            chosen, search = _search(cfg, plan, graph, nodes, user_excluded, fp32, eval_examples, tmp, chosen,
                                     progress, interim)
            excluded += search.pop("excluded")
            metrics.update(search)
            if not metrics["budget_met"]:
                warnings.append(f"accuracy budget {cfg.max_drop:.2%} not met: best drop {metrics['drop']:.2%} "
                                f"(kept in fp32: {', '.join(metrics['kept_fp32_units']) or 'nothing'}); "
                                "the best model found is written")
        elif eval_examples is not None and eval_examples.labels is not None:
            scorer, fp32_scores = _make_scorer(fp32, eval_examples, cfg.eval_samples)
            m = scorer(chosen)
            metrics.update({"accuracy_fp32": fp32_scores["accuracy"], "accuracy": m["accuracy"],
                            "drop": _drop(fp32_scores, m), "sqnr_db": m["sqnr_db"], "mean_kl": m["mean_kl"]})
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


def check_inputs(cfg, calibration, eval_examples) -> None:
    """CompressError for data the config needs and lacks (static: calibration; max_drop: labelled eval data)."""
    if cfg.mode == "static" and (calibration is None or len(calibration) == 0):
        raise CompressError("static quantization needs calibration data",
                            "pass --calibration-data (e.g. ../shared/data/sst2 --calibration-split train) or use --mode dynamic")
    if cfg.max_drop is not None:
        if eval_examples is None or len(eval_examples) == 0:
            raise CompressError("--max-drop needs evaluation data", "pass --eval-data with labelled examples")
        if eval_examples.labels is None:
            raise CompressError("--max-drop needs labelled evaluation data", "pass --eval-data with a label field")


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


def _plan(cfg, fp32: OnnxModel, tmp: Path, calibration) -> tuple[_Plan, bool]:
    """Optimize (fuse) if asked, pre-process for static mode, and fix the types and op types."""
    src = fp32.path
    fuse = cfg.optimize == "transformer" or (cfg.optimize == "auto" and cfg.mode != "static" and _bert_family(fp32))
    if fuse:
        src = _fuse(fp32, tmp / "fused.onnx")
    if cfg.mode == "static":
        src = _preprocess(src, tmp / "pre.onnx")
    cpu = cpu_int8_profile()
    types = resolve_int8_types(cfg, cpu) if cfg.mode != "fp16" else {"reasons": {}}
    types["cpu"] = cpu
    op_types = list(cfg.op_types) if cfg.op_types else list(DEFAULT_OP_TYPES[cfg.mode])
    plan = _Plan(cfg.mode, src, op_types, types, cfg.per_channel, cfg.calibration_method, cfg.percentile,
                 fused=fuse)
    if cfg.mode == "static":
        samples = calibration.subset(np.arange(min(cfg.calibration_samples, len(calibration))))
        names = [i.name for i in load_graph(src).graph.input]
        plan.calibration_reader = calibration_reader(fp32, samples, names)
        plan.calibration_cache = tmp / CALIBRATION_FILE
        plan.types["calibration_samples"] = len(samples)
    return plan, fuse


def _bert_family(fp32: OnnxModel) -> bool:
    config = fp32.folder / "config.json"
    if not config.exists():
        return False
    return json.loads(config.read_text()).get("model_type") in ("bert", "roberta", "distilbert", "xlm-roberta",
                                                                  "electra", "camembert")


def _fuse(fp32: OnnxModel, out: Path) -> Path:
    """onnxruntime.transformers fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm), CPU-portable."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)  # fusion notes about tiny tables
    config = json.loads((fp32.folder / "config.json").read_text())
    kind = {"roberta": "bert", "xlm-roberta": "bert", "camembert": "bert", "electra": "bert"}.get(
        config.get("model_type"), config.get("model_type", "bert"))
    options = FusionOptions(kind)
    # Python fusions only, no symbolic shape inference: the same fusions on MiniLM (6 Attention, 12 SkipLN,
    # 6 BiasGelu, 1 EmbedLayerNorm) in 1.7 s instead of 12 s; the session applies ORT's own optimizations later.
    options.enable_shape_inference = False
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        opt = optimize_model(str(fp32.path), model_type=kind, num_heads=config.get("num_attention_heads", 0),
                             hidden_size=config.get("hidden_size", 0), opt_level=0, optimization_options=options)
    opt.save_model_to_file(str(out))
    return out


def _preprocess(src: Path, out: Path) -> Path:
    """ORT's quantization pre-processing (shape inference + graph cleanup); skip symbolic shapes (§4)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
        return out
    except Exception as e:  # pre-processing is an optimization; quantize the plain graph if it fails
        log.warning("quant_pre_process failed (%s); quantizing without it", type(e).__name__)
        return src


def _search(cfg, plan, graph, nodes, user_excluded, fp32, eval_examples, tmp, chosen, progress, on_better):
    """Sensitivity table + budget search; returns the chosen graph and the metrics/exclusions it implies."""
    scorer, fp32_scores = _make_scorer(fp32, eval_examples, cfg.eval_samples)
    first = scorer(chosen)
    by_name = {n.name: n for n in graph.node}
    units: dict[str, list[str]] = {}
    for name in nodes:
        if name not in user_excluded:
            units.setdefault(unit_of(by_name[name], cfg.granularity), []).append(name)
    table = sensitivity(plan, units, user_excluded, scorer, fp32_scores, cfg.sensitivity, tmp, first, progress)
    max_units = cfg.max_excluded_units if cfg.max_excluded_units is not None else max(1, len(units) // 2)
    steps, best = budget_search(plan, units, table, user_excluded, scorer, fp32_scores, cfg.max_drop, max_units,
                                tmp, first, progress, on_better)
    pick = steps[best]
    if best > 0:
        chosen = Path(pick["path"])
    ranks = {r["unit"]: r for r in table}
    excluded = [{"node": n, "unit": u, "reason": f"sensitivity rank {ranks[u]['rank']} of {len(table)} "
                 f"(score {ranks[u]['score']:.2e}); kept fp32 to meet --max-drop {cfg.max_drop}"}
                for u in pick["excluded_units"] for n in units[u]]
    for s in steps:
        s.pop("path", None)
    return chosen, {"accuracy_fp32": fp32_scores["accuracy"], "accuracy": pick["accuracy"], "drop": pick["drop"],
                    "sqnr_db": pick["sqnr_db"], "mean_kl": pick["mean_kl"], "max_drop": cfg.max_drop,
                    "budget_met": pick["drop"] <= cfg.max_drop, "kept_fp32_units": pick["excluded_units"],
                    "eval_examples": len(scorer.labels), "sensitivity_method": cfg.sensitivity,
                    "sensitivity": table, "search": steps, "excluded": excluded,
                    # {unit: number} series, most sensitive first, for the report's per-layer charts
                    "sensitivity_per_layer": {r["unit"]: r["score"] for r in table},
                    "sensitivity_drop_per_layer": {r["unit"]: r["score_drop"] for r in table}}


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


def _stage(chosen: Path, fp32: OnnxModel, cfg, staging: Path) -> Path:
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


def _settings(cfg, plan: _Plan, fused: bool, excluded: list[dict], metrics: dict, counts: dict) -> dict:
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


def load_settings(folder: str | Path) -> dict:
    """The settings saved beside a quantized model (`quantization.json`)."""
    path = Path(folder)
    path = path / SETTINGS_FILE if path.is_dir() else path.with_name(SETTINGS_FILE)
    if not path.exists():
        raise CompressError(f"no {SETTINGS_FILE} at '{path.parent}'", "pass a folder written by compress quantize")
    settings = json.loads(path.read_text())
    if settings.get("format") != SETTINGS_FORMAT:
        raise CompressError(f"{path} has settings format {settings.get('format')}", "upgrade compress")
    return settings

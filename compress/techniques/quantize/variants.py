"""Making quantized (or fp16) variants of a graph: one plan per run (fusion, pre-processing, types, calibration)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.models.artifacts import OnnxModel
from compress.techniques.quantize.config import QuantizeSettings
from compress.techniques.quantize.graph import load_graph
from compress.techniques.quantize.hardware import cpu_int8_profile, resolve_int8_types

# Measured traps this module is built around (shared/notes/toolchain.md §4-7):
# - dynamic int8 with per-channel S8 weights keeps MiniLM's outputs (cosine 0.99); per-tensor loses more;
# - static QDQ of every op collapses a transformer (cosine ~0.4): the transformer-safe default quantizes only
#   MatMul/Gemm with a constant weight, activations stay fp32 everywhere else;
# - graphs fused by `onnxruntime.transformers` need `DefaultTensorType=FLOAT` to quantize;
# - `quant_pre_process` needs `skip_symbolic_shape=True` on these exports.

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Transformer-safe op types. Dynamic: ORT's integer ops, incl. fused Attention/EmbedLayerNorm and the embedding
# Gather (most of the bytes). Static: only MatMul/Gemm with a constant weight (outputs left fp32) and embedding
# Gathers: every other QDQ pair (Add, Softmax, LayerNorm, activation x activation MatMul) is where accuracy
# collapses (MiniLM pooled cosine 0.39 with all ops; 0.985 with these, 200 SST-2 sentences).
DEFAULT_OP_TYPES = {
    "dynamic": ["MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization"],
    "static": ["MatMul", "Gemm", "Gather"],
    "fp16": [],  # every op converted; exclusions go to the fp16 block list
}


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


@dataclass
class Plan:
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


def make_variant(plan: Plan, out: Path, exclude: list[str]) -> Path:
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


def make_plan(cfg: QuantizeSettings, fp32: OnnxModel, tmp: Path, calibration) -> tuple[Plan, bool]:
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
    plan = Plan(cfg.mode, src, op_types, types, cfg.per_channel, cfg.calibration_method, cfg.percentile,
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

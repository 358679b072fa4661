"""Quantization settings: the fields and their validation, the data they need, and reading them back from a model."""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import Field, model_validator

from compress.core.config import StrictConfig
from compress.core.errors import CompressError
from compress.techniques.quantize.result import load_settings


class QuantizeSettings(StrictConfig):
    """Quantize with ONNX Runtime. Defaults are the measured transformer-safe choices (toolchain.md §4-5, §10)."""

    mode: Literal["dynamic", "static", "fp16", "int4", "weight_only"] = Field(
        "dynamic", description="dynamic: int8 weights, activations quantized at run time (best on CPU); "
        "static: int8 QDQ with calibrated activation ranges (needs calibration data); fp16: for the CUDA provider; "
        "int4: weight-only 4-bit MatMulNBits (causal LMs); weight_only: MatMulNBits with `bits` (4 or 8).")
    bits: Literal[4, 8] = Field(8, description="weight_only: bits per weight (int4 mode is always 4).")
    algorithm: Literal["rtn", "hqq", "k_quant"] = Field(
        "rtn", description="int4/weight_only: rtn = round to nearest; hqq = half-quadratic scale/zero search "
        "(no data needed, less error at 4 bits; float zero points); k_quant = ONNX Runtime's port of llama.cpp's "
        "k-quant scale/min search (no data needed).")
    block_size: int = Field(32, description="int4: weights per quantization block along the input dimension "
                                            "(16, 32, 64, 128 or 256).")
    symmetric: bool = Field(False, description="int4: symmetric blocks (no zero point); asymmetric keeps a minimum.")
    accuracy_level: int | None = Field(
        4, ge=0, le=4, description="int4: MatMulNBits compute type: 4 = int8 compute (fastest on CPU), 1 = fp32, "
        "0/None = unset.")
    head: Literal["int8", "fp32", "int4"] = Field(
        "int8", description="Causal LMs: precision of the output head (lm_head); int4 there makes small models repeat.")
    budget_metric: Literal["perplexity", "kl"] = Field(
        "perplexity", description="Causal LMs: what max_drop bounds: relative perplexity increase (0.03 = +3%) "
        "or mean per-token KL to the fp32 model.")
    block_tokens: int = Field(128, ge=8, description="Causal LMs: tokens per held-out block of the budget search.")
    per_channel: bool = Field(True, description="One weight scale per output channel (MiniLM cosine 0.99 vs 0.96).")
    weight_type: Literal["auto", "qint8", "quint8"] = Field("auto", description="Weight integer type; auto = qint8.")
    reduce_range: bool | None = Field(
        None, description="7-bit weights; None = auto: on when the CPU has no VNNI (recorded with the reason).")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="Static mode: how activation ranges are chosen from the calibration data.")
    percentile: float = Field(99.999, gt=90, le=100, description="Static percentile calibration: kept percentile.")
    calibration_samples: int = Field(256, ge=1, description="Static mode: calibration examples used (one per run).")
    op_types: list[str] | None = Field(
        None, description="Op types to quantize; None = transformer-safe default (dynamic: MatMul, Gemm, Attention, "
        "Gather, EmbedLayerNormalization; static: MatMul/Gemm with constant weights, embedding Gather).")
    exclude: list[str] = Field([], description="Node names or globs kept in fp32; each must match a node.")
    optimize: Literal["auto", "transformer", "none"] = Field(
        "auto", description="Fuse with onnxruntime.transformers first (Attention, SkipLayerNorm...); auto = on for "
        "BERT-family models in dynamic/fp16 mode, off in static mode (fused Attention has no QDQ form).")
    max_drop: float | None = Field(
        None, ge=0, lt=1, description="Accuracy budget vs fp32 on the eval data (0.01 = 1 pt): keep the most "
        "sensitive layers in fp32 until met. Needs labelled eval data.")
    sensitivity: Literal["all_but_one", "alone"] = Field(
        "all_but_one", description="Sensitivity: quantize all but one unit, or one unit alone; ranked by the output KL it accounts for.")
    granularity: Literal["layer", "node"] = Field("layer", description="Sensitivity unit: transformer layer or node.")
    max_excluded_units: int | None = Field(None, ge=1, description="At most this many units kept fp32 (None = half).")
    eval_samples: int | None = Field(None, ge=1, description="Eval examples used by the budget search (None = all).")
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="Target device: cuda checks nodes per execution provider and warns about CPU fallback.")
    ort_format: bool = Field(False, description="Also write model.ort.")

    @model_validator(mode="after")
    def _fp16_has_no_int8_options(self):
        if self.mode == "fp16" and self.max_drop is not None:
            raise ValueError("max_drop searches int8 sensitivity; it does not apply to mode fp16")
        if self.block_size not in (16, 32, 64, 128, 256):
            raise ValueError("block_size must be 16, 32, 64, 128 or 256")
        return self


Settings = TypeVar("Settings", bound=QuantizeSettings)


def check_inputs(cfg: QuantizeSettings, calibration, eval_examples) -> None:
    """CompressError for data the config needs and lacks (static: calibration; max_drop: labelled eval data)."""
    if cfg.mode == "static" and (calibration is None or len(calibration) == 0):
        raise CompressError("static quantization needs calibration data",
                            "pass --calibration-data (e.g. ../shared/data/sst2 --calibration-split train) or use --mode dynamic")
    if cfg.max_drop is not None:
        if eval_examples is None or len(eval_examples) == 0:
            raise CompressError("--max-drop needs evaluation data", "pass --eval-data with labelled examples")
        if eval_examples.labels is None:
            raise CompressError("--max-drop needs labelled evaluation data", "pass --eval-data with a label field")


def load_config(folder, into: type[Settings] = QuantizeSettings) -> Settings:
    """The config a quantized folder was made with (from its quantization.json), as `into` (e.g. a pass config)."""
    return into.model_validate(_as(into, load_settings(folder)["config"]))


def replay_config(folder, into: type[Settings] = QuantizeSettings) -> Settings:
    """A config that re-creates the saved model exactly: resolved types fixed, the final exclusions listed, no search."""
    settings = load_settings(folder)
    resolved = settings["resolved"]
    fixed = {"max_drop": None, "exclude": resolved["excluded_nodes"], "op_types": resolved["op_types"],
             "optimize": resolved["optimized"]}
    if settings["config"]["mode"] != "fp16":
        fixed.update(weight_type=resolved["weight_type"], reduce_range=resolved["reduce_range"])
    return into.model_validate(_as(into, {**settings["config"], **fixed}))


def _as(into: type[QuantizeSettings], saved: dict) -> dict:
    # A pass saves its `type` beside the settings; the settings alone have no such field.
    return saved if "type" in into.model_fields else {k: v for k, v in saved.items() if k != "type"}

"""Pass `quantize_ort`: TorchModel or OnnxModel -> int8 (dynamic or calibrated static QDQ) or fp16 ONNX via ONNX
Runtime, with an optional accuracy budget (per-layer sensitivity, sensitive layers kept fp32). The technique
(settings, graph inspection, variants, sensitivity, the causal-LM flow) is `compress.techniques.quantize`."""

from __future__ import annotations

from typing import Literal

from compress.passes.base import PassContext, PassResult, register_pass
from compress.techniques.quantize import config as quantize_config
from compress.techniques.quantize.api import quantize
from compress.techniques.quantize.config import QuantizeSettings


class QuantizeOrtConfig(QuantizeSettings):
    """Quantize with ONNX Runtime. Defaults are the measured transformer-safe choices (toolchain.md §4-5, §10)."""

    type: Literal["quantize_ort"] = "quantize_ort"


@register_pass(QuantizeOrtConfig, accepts=("torch", "onnx"), returns="onnx")
def quantize_ort(model, cfg: QuantizeOrtConfig, ctx: PassContext) -> PassResult:
    """Quantize `model` into `ctx.workdir/quantized`; static mode needs `ctx.data.calibration`, a budget `ctx.data.eval`.

    Metrics: quantized_matmuls, float_matmuls, size_fp32_mb, size_mb, size_ratio, settings (resolved types,
    reduce_range with its reason, CPU flags), excluded (node, reason), providers, and with `max_drop`:
    accuracy_fp32, accuracy, drop, budget_met, sensitivity (rows per unit) and search (steps).
    """
    # The eval data is read only under a budget, or when the caller asks for the figure (scoring without need
    # would only slow a pipeline stage down: the pipeline scores every stage itself).
    wanted = cfg.max_drop is not None or ctx.score_eval
    result = quantize(model, ctx.workdir / "quantized", cfg, calibration=ctx.data.calibration,
                      eval_data=ctx.data.eval if wanted else None, work_dir=ctx.workdir, on_progress=ctx.on_progress,
                      verdict=ctx.score_eval)
    return PassResult(result.model, {**result.metrics, "warnings": result.warnings})


def load_config(folder) -> QuantizeOrtConfig:
    """The config a quantized folder was made with (from its quantization.json)."""
    return quantize_config.load_config(folder, QuantizeOrtConfig)


def replay_config(folder) -> QuantizeOrtConfig:
    """A config that re-creates the saved model exactly: resolved types fixed, the final exclusions listed, no search."""
    return quantize_config.replay_config(folder, QuantizeOrtConfig)

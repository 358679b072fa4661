"""Pass `export_onnx`: TorchModel -> OnnxModel through `compress.export.onnx` (always parity-checked)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.data import iter_batches
from compress.export.onnx import export_onnx as export
from compress.passes.base import PassConfig, PassContext, PassResult, register_pass


class ExportOnnxConfig(PassConfig):
    """Export to ONNX with dynamic axes; fail when ONNX Runtime outputs differ from PyTorch."""
    type: Literal["export_onnx"] = "export_onnx"
    opset: int = Field(17, ge=11, le=23, description="ONNX opset.")
    exporter: Literal["auto", "torchscript", "dynamo"] = Field("auto", description="Exporter; auto falls back to dynamo.")
    optimize: Literal["none", "ort", "transformer"] = Field("none", description="Graph optimization of the exported model.")
    ort_format: bool = Field(False, description="Also write model.ort.")
    atol: float = Field(1e-4, gt=0, description="Parity tolerance on max |Δlogits|.")
    check_examples: int = Field(64, ge=1, description="Eval examples used for the parity check.")


@register_pass(ExportOnnxConfig, accepts="torch", returns="onnx")
def export_onnx(model, cfg: ExportOnnxConfig, ctx: PassContext) -> PassResult:
    """Export `model` into `ctx.workdir/onnx` and check parity on eval examples (or built-in samples)."""
    batches = None
    if ctx.data.eval is not None and model.task != "feature-extraction":
        batches = list(iter_batches(model, ctx.data.eval.subset(range(min(cfg.check_examples, len(ctx.data.eval)))), 16))
    result = export(model, ctx.workdir / "onnx", check_batches=batches, opset=cfg.opset, exporter=cfg.exporter,
                    optimize=cfg.optimize, ort_format=cfg.ort_format, atol=cfg.atol)
    return PassResult(result.model, {"exporter": result.exporter, "opset": result.opset,
                                     "parity_max_abs_diff": result.parity.max_abs_diff,
                                     "parity_argmax_agreement": result.parity.argmax_agreement})

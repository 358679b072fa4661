"""Pass `export_onnx`: TorchModel -> OnnxModel through `compress.export.api` (always parity-checked)."""

from __future__ import annotations

from typing import Literal

from compress.export.api import ExportSettings, export_model
from compress.passes.base import PassContext, PassResult, register_pass


class ExportOnnxConfig(ExportSettings):
    """Export to ONNX with dynamic axes; fail when ONNX Runtime outputs differ from PyTorch."""

    type: Literal["export_onnx"] = "export_onnx"


@register_pass(ExportOnnxConfig, accepts="torch", returns="onnx")
def export_onnx(model, cfg: ExportOnnxConfig, ctx: PassContext) -> PassResult:
    """Export `model` into `ctx.workdir/onnx` and check parity on eval examples (or built-in samples).

    Causal LMs go through optimum's KV-cache export with logits and greedy-decode parity (`export.causal`)."""
    onnx_model, metrics = export_model(model, ctx.workdir / "onnx", cfg, examples=ctx.data.eval,
                                       on_progress=ctx.on_progress)
    return PassResult(onnx_model, metrics)

"""Pass `export_onnx`: TorchModel -> OnnxModel through `compress.export.onnx` (always parity-checked)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.data.examples import iter_batches
from compress.export.causal import export_causal
from compress.export.onnx import export_onnx as export
from compress.models.causal import is_causal
from compress.passes.base import PassConfig, PassContext, PassResult, register_pass


class ExportOnnxConfig(PassConfig):
    """Export to ONNX with dynamic axes; fail when ONNX Runtime outputs differ from PyTorch."""
    type: Literal["export_onnx"] = "export_onnx"
    opset: int | None = Field(None, ge=11, le=23, description="ONNX opset (default 17; causal LMs: optimum's "
                              "choice for the architecture).")
    exporter: Literal["auto", "torchscript", "dynamo"] = Field("auto", description="Exporter; auto falls back to dynamo.")
    optimize: Literal["none", "ort", "transformer"] = Field("none", description="Graph optimization of the exported model.")
    ort_format: bool = Field(False, description="Also write model.ort.")
    atol: float | None = Field(None, gt=0, description="Parity tolerance on max |Δlogits| (default 1e-4; causal LMs "
                               "1e-3: fp32 logits over a 49k vocabulary differ by ~1e-4 between kernels).")
    check_examples: int = Field(64, ge=1, description="Eval examples used for the parity check.")


@register_pass(ExportOnnxConfig, accepts="torch", returns="onnx")
def export_onnx(model, cfg: ExportOnnxConfig, ctx: PassContext) -> PassResult:
    """Export `model` into `ctx.workdir/onnx` and check parity on eval examples (or built-in samples).

    Causal LMs go through optimum's KV-cache export with logits and greedy-decode parity (`export.causal`)."""
    if is_causal(model):
        texts = list(ctx.data.eval.texts[: cfg.check_examples]) if ctx.data.eval is not None else None
        result = export_causal(model, ctx.workdir / "onnx", texts=texts, atol=cfg.atol or 1e-3,
                               opset=cfg.opset)
        p = result.parity
        return PassResult(result.model, {"exporter": result.exporter, "opset": result.opset,
                                         "parity_max_abs_diff": p.max_abs_diff,
                                         "parity_greedy_identical": f"{p.greedy_identical}/{p.greedy_prompts}",
                                         "parity_greedy_new_tokens": p.greedy_new_tokens})
    batches = None
    if ctx.data.eval is not None and model.task != "feature-extraction":
        batches = list(iter_batches(model, ctx.data.eval.subset(range(min(cfg.check_examples, len(ctx.data.eval)))), 16))
    result = export(model, ctx.workdir / "onnx", check_batches=batches, opset=cfg.opset or 17, exporter=cfg.exporter,
                    optimize=cfg.optimize, ort_format=cfg.ort_format, atol=cfg.atol or 1e-4)
    return PassResult(result.model, {"exporter": result.exporter, "opset": result.opset,
                                     "parity_max_abs_diff": result.parity.max_abs_diff,
                                     "parity_argmax_agreement": result.parity.argmax_agreement})

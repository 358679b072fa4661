"""The export entry point: the one place where classifiers and causal LMs part ways.

Classifiers and plain networks go through `onnx.export_onnx` (parity: max |Δlogits| and argmax agreement on real
batches); causal LMs through `causal.export_causal` (the fused onnxruntime-genai builder graph where the family allows it,
else optimum's KV-cache export; parity: logits on text blocks and greedy decoding with the cache). Both fail with the numbers when parity is off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.core.config import StrictConfig
from compress.data.examples import iter_batches
from compress.export.causal import CAUSAL_ATOL, export_causal
from compress.export.onnx import DEFAULT_OPSET, export_onnx
from compress.models.artifacts import OnnxModel, TorchModel
from compress.models.causal import is_causal


class ExportSettings(StrictConfig):
    """Export to ONNX with dynamic axes; fail when ONNX Runtime outputs differ from PyTorch."""
    opset: int | None = Field(None, ge=11, le=23, description="ONNX opset (default 17; causal LMs: optimum's "
                              "choice for the architecture).")
    exporter: Literal["auto", "torchscript", "dynamo"] = Field("auto", description="Exporter; auto falls back to dynamo.")
    optimize: Literal["none", "ort", "transformer"] = Field("none", description="Graph optimization of the exported model.")
    ort_format: bool = Field(False, description="Also write model.ort.")
    atol: float | None = Field(None, gt=0, description="Parity tolerance on max |Δlogits| (default 1e-4; causal LMs "
                               "5e-3: fp32 logits over a 49k vocabulary differ by up to ~1e-3 between kernels).")
    check_examples: int = Field(64, ge=1, description="Eval examples used for the parity check.")
    graph: Literal["auto", "fused", "optimum"] = Field(
        "auto", description="Causal LMs: fused = onnxruntime-genai's model builder graph (GroupQueryAttention, "
        "genai_config.json; runs in its generator, ~1.7x decode); optimum = text-generation-with-past (what "
        "ORTModelForCausalLM loads); auto = fused where the family is supported, else optimum with a warning.")


def export_model(model: TorchModel, out_dir: str | Path, cfg: ExportSettings | None = None, *,
                 examples=None, on_progress=None) -> tuple[OnnxModel, dict]:
    """Export `model` into `out_dir` and check it against PyTorch; returns the ONNX model and the figures.

    Args:
        model: the PyTorch model (not modified).
        out_dir: the output folder (written atomically).
        cfg: opset, exporter, optimization, tolerance (defaults: `ExportSettings()`).
        examples: real inputs for the parity check (texts for causal LMs); None = built-in samples.
        on_progress: callback(stage, done, total), total None while a step has no count.
    """
    cfg = cfg or ExportSettings()
    opset, atol, check_examples = cfg.opset, cfg.atol, cfg.check_examples
    if is_causal(model):
        texts = list(examples.texts[:check_examples]) if examples is not None else None
        result = export_causal(model, out_dir, texts=texts, atol=CAUSAL_ATOL if atol is None else atol, opset=opset,
                               graph=cfg.graph, on_progress=on_progress)
        p = result.parity
        return result.model, {"exporter": result.exporter, "graph": result.graph, "opset": result.opset,
                              **({"warning": "; ".join(result.warnings)} if result.warnings else {}),
                              "parity_max_abs_diff": p.max_abs_diff,
                              "parity_greedy_identical": f"{p.greedy_identical}/{p.greedy_prompts}",
                              "parity_greedy_new_tokens": p.greedy_new_tokens,
                              "parity_blocks": p.blocks, "parity_block_size": p.block_size,
                              "seconds": round(result.seconds, 1)}
    batches = None
    if examples is not None and model.task != "feature-extraction":
        batches = list(iter_batches(model, examples.subset(range(min(check_examples, len(examples)))), 16))
    if on_progress:
        on_progress("export and parity check", 0, None)
    result = export_onnx(model, out_dir, check_batches=batches, opset=opset or DEFAULT_OPSET, exporter=cfg.exporter,
                         optimize=cfg.optimize, ort_format=cfg.ort_format, atol=1e-4 if atol is None else atol)
    if on_progress:
        on_progress("export and parity check", 1, 1)
    metrics = {"exporter": result.exporter, "opset": result.opset,
               "parity_max_abs_diff": result.parity.max_abs_diff,
               "parity_argmax_agreement": result.parity.argmax_agreement,
               "parity_examples": result.parity.examples}
    if result.ort_path:
        metrics["ort_path"] = str(result.ort_path)
    return result.model, metrics

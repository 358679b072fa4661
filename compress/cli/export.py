"""`compress export`: PyTorch -> ONNX (and ORT format), checked for parity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compress.cli.app import (
    AllowPickleOpt,
    ArchOpt,
    DataOpt,
    InputShapeOpt,
    LimitOpt,
    ModelArg,
    NumLabelsOpt,
    SplitOpt,
    TaskOpt,
    TextFieldOpt,
    TextPairFieldOpt,
    TrustRemoteCodeOpt,
    app,
    console,
    err_console,
    load_model_from_options,
    pass_config,
)


@app.command()
def export(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (model.onnx + config + tokenizer).")],
    opset: Annotated[int | None, typer.Option(min=11, max=23, help="ONNX opset (default: 17; causal LMs: optimum's choice).")] = None,
    exporter: Annotated[str, typer.Option(help="auto (torchscript, then dynamo), torchscript or dynamo.")] = "auto",
    optimize: Annotated[str, typer.Option(help="none, ort (ORT offline graph optimization) or transformer (fused BERT kernels).")] = "none",
    ort_format: Annotated[bool, typer.Option("--ort-format", help="Also write model.ort.")] = False,
    atol: Annotated[float | None, typer.Option(min=0.0, help="Parity tolerance on max |Δlogits| (default 1e-4; causal LMs 5e-3, with greedy decoding identical).")] = None,
    graph: Annotated[str, typer.Option(help="Causal LMs: auto (fused where supported), fused (onnxruntime-genai's builder graph, runs in its generator) or optimum (what ORTModelForCausalLM loads).")] = "auto",
    data: DataOpt = None, split: SplitOpt = None, text_field: TextFieldOpt = "text",
    text_pair_field: TextPairFieldOpt = None,
    limit: LimitOpt = 64,
    task: TaskOpt = None, num_labels: NumLabelsOpt = None, arch: ArchOpt = None,
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
    input_shape: InputShapeOpt = None,
) -> None:
    """Export MODEL to ONNX with dynamic batch/sequence axes; fail with the numbers if outputs differ from PyTorch
    (causal LMs: with the KV cache, logits and greedy decoding checked).

    Example: compress export runs/teacher-sst2 -o runs/teacher-onnx --data ../shared/data/sst2 --split dev
    """
    from compress.core.paths import guard_output
    from compress.passes.base import DataBundle
    from compress.passes.export_onnx import ExportOnnxConfig
    from compress.pipeline.apply import apply_pass, load_check_examples

    guard_output(output, [model, data, arch])
    loaded = load_model_from_options(model, task, num_labels, arch, allow_pickle, trust_remote_code, input_shape)
    cfg = pass_config(ExportOnnxConfig, opset=opset, exporter=exporter, optimize=optimize, ort_format=ort_format, atol=atol,
                           check_examples=limit or 64, graph=graph)
    examples = load_check_examples(loaded, data, split, text_field, text_pair_field, limit)
    from compress.cli.progress import progress

    with progress(console) as on_progress:
        result = apply_pass(loaded, cfg, output, data=DataBundle(eval=examples), on_progress=on_progress)
    m, where = result.metrics, result.model.path
    if "parity_blocks" in m:  # a decoder: logits on text blocks and greedy decoding were checked
        if m.get("warning"):
            err_console.print(f"warning: {m['warning']}")
        console.print(f"exported with [bold]{m['exporter']}[/] ({m['graph']} graph, opset {m['opset']}) to {where} "
                      f"in {m['seconds']:.0f} s")
        console.print(f"parity: max |Δlogits| {m['parity_max_abs_diff']:.2e} on {m['parity_blocks']} blocks of "
                      f"{m['parity_block_size']} tokens; greedy decode of {m['parity_greedy_new_tokens']} tokens "
                      f"identical on {m['parity_greedy_identical']} prompts")
        return
    console.print(f"exported with the [bold]{m['exporter']}[/] exporter (opset {m['opset']}) to {where}")
    console.print(f"parity on {m['parity_examples']} real inputs: max |Δlogits| {m['parity_max_abs_diff']:.2e}, "
                  f"argmax agreement {m['parity_argmax_agreement']:.1%}")
    if ort_format:
        console.print(f"ORT format: {output / 'model.ort'}")

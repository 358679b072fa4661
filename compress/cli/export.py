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
    data_spec,
    load_model_from_options,
)


@app.command()
def export(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (model.onnx + config + tokenizer).")],
    opset: Annotated[int | None, typer.Option(min=11, max=23, help="ONNX opset (default: 17; causal LMs: optimum's choice).")] = None,
    exporter: Annotated[str, typer.Option(help="auto (torchscript, then dynamo), torchscript or dynamo.")] = "auto",
    optimize: Annotated[str, typer.Option(help="none, ort (ORT offline graph optimization) or transformer (fused BERT kernels).")] = "none",
    ort_format: Annotated[bool, typer.Option("--ort-format", help="Also write model.ort.")] = False,
    atol: Annotated[float | None, typer.Option(min=0.0, help="Parity tolerance on max |Δlogits| (default 1e-4; causal LMs 1e-3).")] = None,
    data: DataOpt = None, split: SplitOpt = None, text_field: TextFieldOpt = "text",
    text_pair_field: TextPairFieldOpt = None,
    limit: LimitOpt = 64,
    task: TaskOpt = None, num_labels: NumLabelsOpt = None, arch: ArchOpt = None,
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
    input_shape: InputShapeOpt = None,
) -> None:
    """Export MODEL to ONNX with dynamic batch/sequence axes; fail with the numbers if outputs differ from PyTorch."""
    from compress.core.paths import guard_output
    from compress.data.examples import iter_batches, load_examples
    from compress.export.onnx import export_onnx

    guard_output(output, [model, data, arch])
    loaded = load_model_from_options(model, task, num_labels, arch, allow_pickle, trust_remote_code, input_shape)
    from compress.models.causal import is_causal

    if is_causal(loaded):
        return _causal(loaded, output, data, split, text_field, limit, opset, atol)
    batches = None
    if data:
        examples = load_examples(data_spec(data, split, text_field, text_pair_field, limit=limit))
        batches = list(iter_batches(loaded, examples, batch_size=16))
    result = export_onnx(loaded, output, check_batches=batches, opset=opset or 17, exporter=exporter,
                         optimize=optimize, ort_format=ort_format, atol=1e-4 if atol is None else atol)
    p = result.parity
    console.print(f"exported with the [bold]{result.exporter}[/] exporter (opset {result.opset}) to {result.model.path}")
    console.print(f"parity on {p.examples} real inputs: max |Δlogits| {p.max_abs_diff:.2e}, "
                  f"argmax agreement {p.argmax_agreement:.1%}")
    if result.ort_path:
        console.print(f"ORT format: {result.ort_path}")


def _causal(loaded, output, data, split, text_field, limit, opset, atol) -> None:
    """Decoders: optimum's KV-cache export, logits and greedy-decode parity."""
    from compress.export.causal import export_causal

    texts = None
    if data:
        from compress.data.causal import TextSource, load_texts

        texts = load_texts(TextSource(data, split=split, text_field=text_field))[: limit or None]
    with console.status("exporting with the KV cache, then checking logits and greedy decoding against PyTorch"):
        result = export_causal(loaded, output, texts=texts, opset=opset, atol=1e-3 if atol is None else atol)
    p = result.parity
    console.print(f"exported with [bold]{result.exporter}[/] (opset {result.opset}) to {result.model.path} "
                  f"in {result.seconds:.0f} s")
    console.print(f"parity: max |Δlogits| {p.max_abs_diff:.2e} on {p.blocks} blocks of {p.block_size} tokens; greedy "
                  f"decode of {p.greedy_new_tokens} tokens identical on {p.greedy_identical}/{p.greedy_prompts} prompts")

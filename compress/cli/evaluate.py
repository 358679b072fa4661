"""`compress eval`: accuracy (and macro-F1), and agreement with a reference model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from compress.cli.app import (
    AllowPickleOpt,
    ArchOpt,
    DataOpt,
    LabelFieldOpt,
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


@app.command("eval")
def evaluate(
    model: ModelArg,
    data: DataOpt = None,
    split: SplitOpt = None, text_field: TextFieldOpt = "text", text_pair_field: TextPairFieldOpt = None,
    label_field: LabelFieldOpt = "label", limit: LimitOpt = None,
    reference: Annotated[str | None, typer.Option(help="Another model to compare outputs with.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Evaluation batch size.")] = 64,
    max_length: Annotated[int, typer.Option(min=2, help="Token truncation length.")] = 128,
    block_size: Annotated[int, typer.Option(min=2, help="Causal LMs: tokens per held-out block.")] = 128,
    max_blocks: Annotated[int, typer.Option(min=1, help="Causal LMs: score at most this many blocks.")] = 32,
    new_tokens: Annotated[int, typer.Option(min=1, help="Causal LMs: greedy tokens per prompt for generation agreement.")] = 32,
    part: Annotated[str, typer.Option(help="Causal LMs: all texts, or the train / heldout side of the hash split.")] = "all",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics here.")] = None,
    task: TaskOpt = None, num_labels: NumLabelsOpt = None, arch: ArchOpt = None,
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Score MODEL (PyTorch or ONNX, one scoring path) on labelled data."""
    from rich.table import Table

    from compress.core.errors import CompressError
    from compress.data.examples import load_examples
    from compress.evaluation.accuracy import evaluate as run_eval

    if not data:
        raise CompressError("no evaluation data", "pass --data (e.g. ../shared/data/sst2 --split dev)")
    if json_out is not None:
        from compress.core.paths import guard_output

        guard_output(json_out, [model, data, reference, arch], kind="file", what="--json")
    loaded = load_model_from_options(model, task, num_labels, arch, allow_pickle, trust_remote_code)
    from compress.models.causal import is_causal

    if is_causal(loaded):
        ref = load_model_from_options(reference, None, None, None, allow_pickle, trust_remote_code) if reference else None
        return _causal(loaded, ref, model, data, split, text_field, part, block_size, max_blocks, new_tokens,
                       batch_size, json_out)
    examples = load_examples(data_spec(data, split, text_field, text_pair_field, label_field, limit))
    if examples.labels is None and not reference and loaded.task in ("text-classification", "image-classification"):
        raise CompressError(f"the data '{data}' has no labels (no field '{label_field}')",
                            "pass --label-field naming the labels, or --reference to compare with another model")
    ref = load_model_from_options(reference, task, num_labels, arch, allow_pickle, trust_remote_code) if reference else None
    metrics = run_eval(loaded, examples, reference=ref, batch_size=batch_size, max_length=max_length)
    table = Table("metric", "value", title=f"{model} on {data}{':' + split if split else ''}")
    for key, value in metrics.items():
        if isinstance(value, dict):
            for k, v in value.items():
                table.add_row(f"{key}.{k}", f"{v:.6g}")
        else:
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps(metrics, indent=2))


def _causal(loaded, ref, model, data, split, text_field, part, block_size, max_blocks, new_tokens, batch_size, json_out):
    """Perplexity (and KL / top-1 / greedy agreement with --reference) of a causal LM on held-out text blocks."""
    from rich.progress import Progress
    from rich.table import Table

    from compress.data.causal import TextSource, prompt_ids, text_blocks
    from compress.evaluation.causal import evaluate_causal

    if ref is not None and ref.task != loaded.task:
        from compress.core.errors import CompressError

        raise CompressError(f"the reference is a {ref.task} model, not a causal LM", "pass the causal teacher as --reference")
    blocks = text_blocks(TextSource(data, split=split, text_field=text_field, part=part), loaded.tokenizer,
                         block_size, max_blocks)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        bar = progress.add_task("scoring blocks", total=len(blocks))
        metrics = evaluate_causal(loaded, blocks, reference=ref, prompts=prompt_ids(loaded.tokenizer),
                                  max_new_tokens=new_tokens, batch_size=min(batch_size, 8),
                                  on_progress=lambda d, t: progress.update(bar, completed=d, total=t))
    table = Table("metric", "value", title=f"{model} on {data}{':' + split if split else ''} "
                  f"({metrics['blocks']} blocks of {metrics['block_size']} tokens)")
    for key in ("perplexity", "nll", "tokens", "kl", "top1_agreement", "greedy_prefix", "greedy_agreement"):
        if key in metrics:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps(metrics, indent=2))

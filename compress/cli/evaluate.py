"""`compress eval`: accuracy (and macro-F1), and agreement with a reference model; for causal LMs, per-document
perplexity (with bits per byte and word perplexity), KL / top-1 / greedy agreement with a reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compress.cli.app import (
    WINDOW_RENAMED,
    AllowPickleOpt,
    ArchOpt,
    DataOpt,
    LabelFieldOpt,
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
    deprecated,
    json_destination,
    load_model_from_options,
    write_json,
)


@app.command("eval")
def evaluate(
    model: ModelArg,
    data: DataOpt = None,
    split: SplitOpt = None, text_field: TextFieldOpt = "text", text_pair_field: TextPairFieldOpt = None,
    label_field: LabelFieldOpt = "label",
    limit: Annotated[int | None, typer.Option(min=1, help="Use at most this many examples (causal LMs: documents; "
                                              "--zero-shot: examples per task).")] = None,
    reference: Annotated[str | None, typer.Option(help="Another model to compare outputs with (causal LMs: the "
                                                  "teacher, for KL, top-1 and greedy agreement).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Evaluation batch size.")] = 64,
    max_length: Annotated[int, typer.Option(min=2, help="Classifiers: token truncation length (causal LMs read "
                                            "--window tokens).")] = 128,
    window: Annotated[int, typer.Option(min=2, help="Causal LMs: the scoring window, the most tokens read per "
                                        "forward pass (longer documents are scored in rolling windows).")] = 128,
    block_size: Annotated[int | None, typer.Option(min=2, hidden=True, help="Old name of --window.")] = None,
    max_documents: Annotated[int | None, typer.Option(min=1, hidden=True, help="Old name of --limit.")] = None,
    max_blocks: Annotated[int | None, typer.Option(min=1, hidden=True, help="Old name of --limit.")] = None,
    separator: Annotated[str | None, typer.Option(help="Causal LMs: the token before each document (default: "
                                                  "<|endoftext|> if the vocabulary has it, else BOS when the tokenizer "
                                                  "adds it, else EOS).")] = None,
    new_tokens: Annotated[int, typer.Option(min=1, help="Causal LMs: greedy tokens per prompt for generation agreement.")] = 32,
    part: Annotated[str, typer.Option(help="Causal LMs: all texts, or the train / heldout side of the hash split.")] = "all",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics here ('-': to stdout, "
                                                  "the table then goes to stderr).")] = None,
    zero_shot: Annotated[list[str] | None, typer.Option("--zero-shot", help="Causal LMs: score a zero-shot task by the "
                                                    "answers' log-likelihood (lm-eval's method): sst2, rte, emotion; "
                                                    "repeatable; needs no --data.")] = None,
    data_root: Annotated[Path, typer.Option(help="Zero-shot tasks: the folder holding their datasets.")] = Path("../shared/data"),
    task: TaskOpt = None, num_labels: NumLabelsOpt = None, arch: ArchOpt = None,
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Score MODEL (PyTorch or ONNX, one scoring path): accuracy on labelled data, or a causal LM's per-document
    perplexity on text (with KL and agreement against --reference).

    Example: compress eval tiny:llama --data ../shared/data/rte --split validation --window 128 --limit 50 --json -
    """
    from rich.table import Table

    from compress.core.errors import CompressError
    from compress.data.examples import load_examples
    from compress.evaluation.accuracy import evaluate as run_eval

    window = deprecated("--block-size", "--window", block_size, window, WINDOW_RENAMED)
    limit = deprecated("--max-documents", "--limit", max_documents, limit)
    limit = deprecated("--max-blocks", "--limit", max_blocks, limit)
    if zero_shot:  # the tasks bring their own data (under --data-root)
        return _zero_shot(model, zero_shot, data_root, limit, batch_size, json_out, data, reference,
                          (task, num_labels, arch, allow_pickle, trust_remote_code))
    if not data:
        raise CompressError("no evaluation data", "pass --data (e.g. ../shared/data/sst2 --split dev)")
    json_destination(json_out, [model, data, reference, arch])
    loaded = load_model_from_options(model, task, num_labels, arch, allow_pickle, trust_remote_code)
    from compress.models.causal import is_causal

    if is_causal(loaded):
        from compress.pipeline.preflight import check_window

        check_window(window, loaded, "--window")
        ref = load_model_from_options(reference, None, None, None, allow_pickle, trust_remote_code) if reference else None
        return _causal(loaded, ref, model, data, split, text_field, part, window, limit,
                       separator, new_tokens, batch_size, json_out)
    examples = load_examples(data_spec(data, split, text_field, text_pair_field, label_field, limit))
    if examples.labels is None and not reference and loaded.task in ("text-classification", "image-classification"):
        raise CompressError(f"the data '{data}' has no labels (no field '{label_field}')",
                            "pass --label-field naming the labels, or --reference to compare with another model")
    ref = load_model_from_options(reference, task, num_labels, arch, allow_pickle, trust_remote_code) if reference else None
    from compress.cli.progress import progress

    with progress(console) as on_progress:
        on_progress("evaluating", 0, None)  # one predict pass per model: no count to show
        metrics = run_eval(loaded, examples, reference=ref, batch_size=batch_size, max_length=max_length)
    table = Table("metric", "value", title=f"{model} on {data}{':' + split if split else ''}")
    for key, value in metrics.items():
        if isinstance(value, dict):
            for k, v in value.items():
                table.add_row(f"{key}.{k}", f"{v:.6g}")
        else:
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    write_json(json_out, metrics)


def _causal(loaded, ref, model, data, split, text_field, part, window, max_documents, separator, new_tokens,
            batch_size, json_out):
    """Per-document perplexity, bits per byte and word perplexity (and KL / top-1 / greedy agreement with
    --reference) of a causal LM on held-out texts, each document scored on its own."""
    from rich.table import Table

    from compress.cli.progress import progress
    from compress.data.causal import TextSource, document_separator, load_texts, prompt_ids
    from compress.evaluation.causal import greedy_agreement, score_documents
    from compress.runtime.causal import CausalRunner

    if ref is not None and ref.task != loaded.task:
        from compress.core.errors import CompressError

        raise CompressError(f"the reference is a {ref.task} model, not a causal LM", "pass the causal teacher as --reference")
    texts = load_texts(TextSource(data, split=split, text_field=text_field, part=part))[:max_documents]
    sep = document_separator(loaded.tokenizer, separator)
    # One runner per model for scoring and generation (an ONNX model is one session, not two).
    run, ref_run = CausalRunner(loaded), (CausalRunner(ref) if ref is not None else None)
    with progress(console) as on_progress:
        on_progress("scoring documents", 0, len(texts))
        metrics = score_documents(loaded, texts, window=window, separator_id=sep, reference=ref,
                                  batch_size=min(batch_size, 8), runner=run, reference_runner=ref_run,
                                  on_progress=lambda d, t: on_progress("scoring documents", d, t))
        on_progress("greedy generation", 0, None)
        metrics.update(greedy_agreement(run, prompt_ids(loaded.tokenizer), new_tokens, reference=ref_run))
        on_progress("greedy generation", 1, 1)
    table = Table("metric", "value", title=f"{model} on {data}{':' + split if split else ''} "
                  f"({metrics['documents']} documents, window {metrics['window']} tokens)")
    for key in ("perplexity", "bits_per_byte", "word_perplexity", "nll", "tokens", "documents", "kl",
                "top1_agreement", "greedy_prefix", "greedy_agreement"):
        if key in metrics:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    write_json(json_out, metrics)


def _zero_shot(model, tasks, data_root, limit, batch_size, json_out, data, reference, load_options):
    """Zero-shot accuracy of a causal LM on each task, lm-eval's acc and acc_norm with 95% Wilson intervals."""
    from rich.table import Table
    from rich.text import Text

    from compress.cli.progress import progress
    from compress.core.errors import CompressError
    from compress.evaluation.tasks import get_task, zero_shot

    if data or reference:
        raise CompressError("--zero-shot runs on its own tasks' data", "drop --data / --reference, or run them separately")
    specs = [get_task(name) for name in tasks]  # unknown names fail before the model loads
    json_destination(json_out, [model, str(data_root)])
    loaded = load_model_from_options(model, *load_options)
    results = {}
    with progress(console) as on_progress:
        for spec in specs:
            stage = f"zero-shot {spec.name}"
            on_progress(stage, 0, None)  # the task's data loads before its first request is scored
            results[spec.name] = zero_shot(loaded, spec, data_root=data_root, limit=limit, batch_size=min(batch_size, 8),
                                           on_progress=lambda d, t, stage=stage: on_progress(stage, d, t))
    title = Text(f"{model}: zero-shot, log-likelihood of the answers (lm-eval method, raw prompt)")  # (no emoji)
    table = Table("task", "examples", "accuracy [95% CI]", "acc_norm [95% CI]", "majority", title=title)
    for name, m in results.items():
        cells = [f"{m[k]:.4f} [{m['ci95'][k][0]:.4f}, {m['ci95'][k][1]:.4f}]" for k in ("accuracy", "accuracy_norm")]
        table.add_row(name, str(m["examples"]), *cells, f"{m['majority']:.4f}")
    console.print(table)
    write_json(json_out, {"zero_shot": results})

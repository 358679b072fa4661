"""`compress prune` and `compress factorize`: shrink a model, optionally recover by distillation, save it
(config + surgery manifest + safetensors, no pickle) and show per-layer tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compress.cli.app import (
    AllowPickleOpt,
    ArchOpt,
    BatchOpt,
    EpochsOpt,
    EvalLimitOpt,
    EvalSplitOpt,
    LimitTrainOpt,
    LrOpt,
    MaxLenOpt,
    MaxStepsOpt,
    ModelArg,
    NumLabelsOpt,
    TaskOpt,
    TextFieldOpt,
    TextPairFieldOpt,
    TrainSplitOpt,
    TrustRemoteCodeOpt,
    app,
    console,
    load_model_from_options,
    pass_config,
)

TargetsOpt = Annotated[list[str] | None, typer.Option("--targets", help="Glob of layer names to edit (repeat, or comma-separate).")]
ExcludeOpt = Annotated[list[str] | None, typer.Option("--exclude", help="Glob of layer names to leave alone (repeat, or comma-separate).")]
RecoverOpt = Annotated[bool, typer.Option("--recover", help="Distil from the unedited model afterwards (needs --data).")]
RecoverDataOpt = Annotated[str | None, typer.Option("--data", help="Training data for --recover (e.g. ../shared/data/sst2); decoder LMs: also the calibration text (.txt, JSONL...).")]


@app.command()
def prune(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (loads with compress load_model).")],
    sparsity: Annotated[float | None, typer.Option(help="Fraction removed, in [0, 1): weights, or units with --structured.")] = None,
    structured: Annotated[str | None, typer.Option(help="Remove whole units: neurons (FFN), heads, channels (any conv/MLP network, dependency graph), or layers (decoder LMs).")] = None,
    depth: Annotated[int | None, typer.Option(min=1, help="--structured layers: decoder layers kept (instead of --sparsity).")] = None,
    layer_selection: Annotated[str | None, typer.Option(help="--structured layers: which layers go: importance (block influence, the default), perplexity (greedy, by calibration loss; slower), or even.")] = None,
    calibration_blocks: Annotated[int | None, typer.Option(min=1, help="Decoder LMs: calibration blocks of --data text used for scoring (default 16).")] = None,
    global_: Annotated[bool, typer.Option("--global", help="One ranking over all targeted layers instead of per layer.")] = False,
    targets: TargetsOpt = None, exclude: ExcludeOpt = None,
    importance: Annotated[str, typer.Option(help="Structured: importance score of a unit (l1, l2).")] = "l2",
    round_to: Annotated[int, typer.Option(min=1, help="Structured: kept widths rounded to this multiple.")] = 8,
    schedule: Annotated[str, typer.Option(help="Unstructured: oneshot, or gradual (cubic, during --recover).")] = "oneshot",
    recover: RecoverOpt = False, data: RecoverDataOpt = None, split: TrainSplitOpt = "train",
    eval_split: EvalSplitOpt = None, epochs: EpochsOpt = 1.0, max_steps: MaxStepsOpt = None, lr: LrOpt = 1e-4,
    batch_size: BatchOpt = 32, max_length: MaxLenOpt = 64, limit: LimitTrainOpt = None, eval_limit: EvalLimitOpt = None,
    text_field: TextFieldOpt = "text", text_pair_field: TextPairFieldOpt = None,
    task: TaskOpt = None, num_labels: NumLabelsOpt = None, arch: ArchOpt = None,
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Prune MODEL: unstructured magnitude (smaller zipped file, same speed) or --structured (smaller and faster;
    decoder LMs: --structured layers/neurons/heads, scored on --data calibration text).

    Example: compress prune runs/teacher-sst2 --structured neurons --sparsity 0.5 --recover --data ../shared/data/sst2 -o runs/pruned
    """
    from compress.passes.prune_magnitude import PruneMagnitudeConfig
    from compress.passes.prune_structured import PruneStructuredConfig

    if sparsity is None:
        if not depth:
            from compress.core.errors import CompressError

            raise CompressError("no --sparsity given", "pass --sparsity 0.5 (or --structured layers --depth K)")
        sparsity = 0.0
    common = dict(sparsity=sparsity, scope="global" if global_ else "layer", targets=_globs(targets),
                  exclude=_globs(exclude), recover=_recover(recover, data, epochs, max_steps, lr, batch_size, max_length))
    if structured:
        cfg = pass_config(PruneStructuredConfig, unit=structured, importance=importance, round_to=round_to,
                      **_given(depth=depth, layer_selection=layer_selection, calibration_blocks=calibration_blocks),
                      **common)
    else:
        cfg = pass_config(PruneMagnitudeConfig, schedule=schedule, **common)
    metrics = _run(cfg, model, output, data, split, eval_split, limit, eval_limit, text_field, text_pair_field,
                   (task, num_labels, arch, allow_pickle, trust_remote_code))
    if structured:
        _structured_table(metrics)
    else:
        _unstructured_table(metrics)
    _summary(metrics, output)


@app.command()
def factorize(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (loads with compress load_model).")],
    rank_ratio: Annotated[float | None, typer.Option(help="Rank as a fraction of min(in, out), in (0, 1].")] = None,
    energy: Annotated[float | None, typer.Option(help="Smallest rank keeping this fraction of the squared singular values.")] = None,
    rank: Annotated[int | None, typer.Option(help="The same rank for every targeted layer.")] = None,
    round_to: Annotated[int, typer.Option(min=1, help="Ranks rounded to this multiple.")] = 8,
    targets: TargetsOpt = None, exclude: ExcludeOpt = None,
    recover: RecoverOpt = False, data: RecoverDataOpt = None, split: TrainSplitOpt = "train",
    eval_split: EvalSplitOpt = None, epochs: EpochsOpt = 1.0, max_steps: MaxStepsOpt = None, lr: LrOpt = 1e-4,
    batch_size: BatchOpt = 32, max_length: MaxLenOpt = 64, limit: LimitTrainOpt = None, eval_limit: EvalLimitOpt = None,
    text_field: TextFieldOpt = "text", text_pair_field: TextPairFieldOpt = None,
    task: TaskOpt = None, num_labels: NumLabelsOpt = None, arch: ArchOpt = None,
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Factorize MODEL's Linear/Conv layers by truncated SVD (two thinner layers each); skip layers with no FLOP saving.

    Example: compress factorize runs/teacher-sst2 --energy 0.9 -o runs/factorized
    """
    from compress.passes.factorize import FactorizeConfig

    cfg = pass_config(FactorizeConfig, rank_ratio=rank_ratio, energy=energy, rank=rank, round_to=round_to,
                  targets=_globs(targets), exclude=_globs(exclude),
                  recover=_recover(recover, data, epochs, max_steps, lr, batch_size, max_length))
    metrics = _run(cfg, model, output, data, split, eval_split, limit, eval_limit, text_field, text_pair_field,
                   (task, num_labels, arch, allow_pickle, trust_remote_code))
    _factorize_table(metrics)
    _summary(metrics, output)


# --- glue ----------------------------------------------------------------------------------------------------


def _given(**options) -> dict:
    """The options the user passed: the config's own defaults stand for the rest (one place for each default)."""
    return {k: v for k, v in options.items() if v is not None}


def _globs(values: list[str] | None) -> list[str]:
    return [g.strip() for v in values or [] for g in v.split(",") if g.strip()]


def _recover(on: bool, data, epochs, max_steps, lr, batch_size, max_length):
    from compress.core.errors import CompressError
    from compress.techniques.distill.recover import RecoverConfig

    if not on:
        return None
    if not data:
        raise CompressError("--recover needs training data", "pass --data (e.g. ../shared/data/sst2)")
    return RecoverConfig(epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, max_length=max_length)


def _run(cfg, model, output: Path, data, split, eval_split, limit, eval_limit, text_field, text_pair_field,
         load_opts) -> dict:
    """Load the model (and data), then run the pass and save atomically (`compress.pipeline.apply`)."""
    from compress.cli.train import load_train_eval
    from compress.core.errors import CompressError
    from compress.core.paths import guard_output
    from compress.passes.base import DataBundle
    from compress.pipeline.apply import apply_pass

    guard_output(output, [model, data, load_opts[2]])
    loaded = load_model_from_options(model, *load_opts)
    if loaded.kind != "torch":
        raise CompressError(f"'{model}' is an ONNX model; {cfg.type} edits PyTorch models", "pass the PyTorch model")
    train = evals = None
    if cfg.recover is not None or data:  # training data for recovery; calibration text for decoder pruning
        train, evals = load_train_eval(data, split, eval_split, text_field, text_pair_field, limit=limit,
                                       eval_limit=eval_limit)
    record = {"pass": cfg.type, "config": cfg.model_dump(mode="json"), "source": model}
    return apply_pass(loaded, cfg, output, data=DataBundle(train=train, eval=evals),
                      record=record, progress=True).metrics


def _unstructured_table(m: dict) -> None:
    table = _table(f"magnitude pruning ({m['scope']}, {m['schedule']})", "sparsity")
    for name, s in m["sparsity_per_layer"].items():
        table.add_row(name, f"{s:.1%}")
    console.print(table)
    _skipped(m)
    console.print(f"targeted weights sparsity {m['sparsity_targeted']:.1%}, whole model {m['sparsity_model']:.1%}; "
                  f"zipped {m['zipped_mb_before']:.2f} MB -> {m['zipped_mb_after']:.2f} MB")
    console.print(f"[yellow]note:[/] {m['note']}")


def _structured_table(m: dict) -> None:
    if "decoder" in m:  # causal LMs: one width for every layer
        info = m["decoder"]
        table = _table(f"decoder pruning ({m['unit']})", "before", "after")
        for what in ("layers", "neurons", "kv_groups", "query_heads"):
            if f"{what}_before" in info:
                table.add_row(what.replace("_", " "), str(info[f"{what}_before"]), str(info[f"{what}_after"]))
        console.print(table)
        return
    table = _table(f"structured pruning ({m['unit']})", f"{m['unit']} before", "after", "removed")
    for name, v in m["units_per_layer"].items():
        table.add_row(name, str(v["before"]), str(v["after"]), f"{v['removed_fraction']:.1%}")
    console.print(table)
    _skipped(m)


def _factorize_table(m: dict) -> None:
    table = _table("low-rank factorization", "rank", "energy kept", "rel. error", "params")
    for name, v in m["layers"].items():
        table.add_row(name, f"{v['rank']}/{v['full_rank']}", f"{v['energy']:.3f}", f"{v['rel_error']:.3f}",
                      f"{v['params_before']:,} -> {v['params_after']:,}")
    console.print(table)
    _skipped(m)


def _table(title: str, *columns: str, justify: str = "right"):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("layer", overflow="fold", min_width=30)
    for column in columns:
        table.add_column(column, justify=justify)
    return table


def _skipped(m: dict) -> None:
    if m["skipped"]:
        table = _table("left unchanged", "reason", justify="left")
        for name, reason in m["skipped"].items():
            table.add_row(name, reason)
        console.print(table)


def _summary(m: dict, output: Path) -> None:
    before, after = m["params_before"], m["params_after"]
    line = f"parameters {before:,} -> {after:,} ({after / before:.1%})"
    if "recovery" in m:
        rec = m["recovery"]
        line += f"; recovery {rec.get('steps', '?')} steps"
        if rec.get("best_eval_accuracy") is not None:
            line += f", best eval accuracy {rec['best_eval_accuracy']:.4f}"
    console.print(line)
    console.print(f"saved to {output} (reload: compress.models.load.load_model('{output}'))")

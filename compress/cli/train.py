"""`compress finetune` and `compress distill`: the training commands (one shared Accelerate loop).

Both run unchanged on several processes or GPUs: `accelerate launch --multi_gpu -m compress distill ...`
(GPUs) or `torchrun --nproc_per_node N -m compress distill ...` (CPU processes).

Flagship (MiniLM-L6 on SST-2; teacher 88.5% test, ~14 min on 2 busy cores):
    compress finetune minilm --num-labels 2 --data ../shared/data/sst2 --split train --eval-split dev \
        --lr 5e-5 --batch-size 32 --warmup-ratio 0.06 --epochs 3 --max-length 64 -o runs/teacher-sst2
    compress distill runs/teacher-sst2 3 --data ../shared/data/sst2 --split train --eval-split dev \
        --alpha 0.5 --temperature 2 --lr 1e-4 --epochs 3 --max-length 64 -o runs/student-3l-sst2
    compress eval runs/student-3l-sst2 --data ../shared/data/sst2 --split test
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compress.cli.app import (
    WINDOW_RENAMED,
    AllowPickleOpt,
    ArchOpt,
    BatchOpt,
    CkptOpt,
    ClipOpt,
    DataOpt,
    EpochsOpt,
    EvalLimitOpt,
    EvalSplitOpt,
    LabelFieldOpt,
    LimitTrainOpt,
    LrOpt,
    MaxLenOpt,
    MaxStepsOpt,
    ModelArg,
    NumLabelsOpt,
    OutOpt,
    PatienceOpt,
    PrecisionOpt,
    ProgressOpt,
    ResumeOpt,
    SeedOpt,
    TaskOpt,
    TextFieldOpt,
    TextPairFieldOpt,
    TrainSplitOpt,
    TrustRemoteCodeOpt,
    WarmupOpt,
    WdOpt,
    app,
    console,
    data_spec,
    deprecated,
    load_model_from_options,
    pass_config,
)


def _at_least(value: int, low: int, option: str) -> int:
    """An option's lower bound, checked as it is parsed: one CompressError line naming the option (typer's own
    bound error is a usage box)."""
    if value < low:
        from compress.core.errors import CompressError

        raise CompressError(f"{option} {value} is too small (at least {low})", f"pass {option} {low} or more")
    return value


def _train_settings(**options) -> dict:
    """The shared loop's config fields from CLI options (0 means off for the clip)."""
    options["grad_clip"] = options["grad_clip"] or None
    return options


def _load_data(data, split, eval_split, text_field, text_pair_field, label_field, limit, eval_limit):
    from compress.core.errors import CompressError

    if not data:
        raise CompressError("no training data", "pass --data (e.g. ../shared/data/sst2 --split train)")
    return load_train_eval(data, split, eval_split, text_field, text_pair_field, label_field, limit, eval_limit)


def load_train_eval(data, split, eval_split, text_field="text", text_pair_field=None, label_field="label",
                    limit=None, eval_limit=None):
    """Training (and evaluation) examples from the CLI's data options. A plain `.txt` file (causal LMs: one text
    per paragraph) is read by `compress.data.causal.load_texts`; with --eval-split its texts are split by a hash
    of their content into a training and a held-out side (`TextSource.part`), else all of them train."""
    from compress.data.examples import load_examples

    if Path(str(data)).suffix == ".txt":
        from compress.data.causal import TextSource, load_texts
        from compress.data.examples import Examples

        def texts(part, at_most):
            found = load_texts(TextSource(source=str(data), part=part))
            return Examples(texts=found[:at_most] if at_most else found, origin=str(data))

        return texts("train" if eval_split else "all", limit), texts("heldout", eval_limit) if eval_split else None
    train = load_examples(data_spec(data, split, text_field, text_pair_field, label_field, limit))
    evals = load_examples(data_spec(data, eval_split, text_field, text_pair_field, label_field, eval_limit)) if eval_split else None
    return train, evals


def _render(title: str, metrics: dict, output: Path) -> None:
    from rich.table import Table

    table = Table("epoch", "train loss", "eval accuracy", title=title)
    evals = {e["epoch"]: e for e in metrics.get("eval", [])}
    for i, loss in enumerate(metrics.get("epoch_loss", []), start=1):
        acc = evals.get(i, {}).get("accuracy")
        star = " *" if metrics.get("best_epoch") == i else ""
        table.add_row(str(i), f"{loss:.4f}" if loss is not None else "-", f"{acc:.4f}{star}" if acc is not None else "-")
    console.print(table)
    console.print(f"{metrics['steps']} steps in {metrics['seconds']:.0f} s ({metrics['examples_per_s']} ex/s); "
                  f"model and metrics.json in {output}")


@app.command()
def finetune(
    model: ModelArg,
    output: OutOpt,
    data: DataOpt = None, split: TrainSplitOpt = "train", eval_split: EvalSplitOpt = None,
    text_field: TextFieldOpt = "text", text_pair_field: TextPairFieldOpt = None, label_field: LabelFieldOpt = "label",
    limit: LimitTrainOpt = None, eval_limit: EvalLimitOpt = None,
    epochs: EpochsOpt = 3.0, max_steps: MaxStepsOpt = None, batch_size: BatchOpt = 32, lr: LrOpt = 5e-5,
    weight_decay: WdOpt = 0.01, warmup_ratio: WarmupOpt = 0.06, grad_clip: ClipOpt = 1.0, max_length: MaxLenOpt = 128,
    seed: SeedOpt = 0, patience: PatienceOpt = None, checkpoint_every: CkptOpt = None, resume: ResumeOpt = False,
    mixed_precision: PrecisionOpt = "auto", progress: ProgressOpt = True,
    task: TaskOpt = None, num_labels: NumLabelsOpt = None, arch: ArchOpt = None,
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Fine-tune MODEL on labelled data (cross-entropy, AdamW, warm-up/decay, best epoch kept) into OUTPUT.
    Classifiers only: a causal LM is trained with `compress distill`.

    Example: compress finetune minilm --num-labels 2 --data ../shared/data/sst2 --split train --eval-split dev -o runs/teacher-sst2
    """
    from compress.core.paths import guard_output
    from compress.passes.base import DataBundle
    from compress.passes.finetune import FinetuneConfig
    from compress.pipeline.apply import apply_pass
    from compress.training.finetune import check_trainable_classifier

    guard_output(output, [model, data, arch])
    train, evals = _load_data(data, split, eval_split, text_field, text_pair_field, label_field, limit, eval_limit)
    loaded = load_model_from_options(model, task or _default_task(model), num_labels or train.num_labels, arch,
                                     allow_pickle, trust_remote_code)
    check_trainable_classifier(loaded)  # before any work: a causal LM would crash mid-run
    cfg = pass_config(FinetuneConfig, **_train_settings(
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        warmup_ratio=warmup_ratio, grad_clip=grad_clip, max_length=max_length, seed=seed, patience=patience,
        checkpoint_every=checkpoint_every, resume=resume, mixed_precision=mixed_precision))
    result = apply_pass(_torch_only(loaded, model), cfg, output, data=DataBundle(train=train, eval=evals),
                        record={"command": "finetune", "model": model, "config": cfg.model_dump()},
                        record_file="metrics.json", metrics_key=None, progress=progress)
    _done("finetune", result.metrics, output)


@app.command()
def distill(
    teacher: Annotated[str, typer.Argument(help="Teacher model (path, hub id, 'minilm').")],
    student: Annotated[str | None, typer.Argument(help="Student model path / hub id, or an integer K: the teacher cut to K layers.")] = None,
    output: OutOpt = Path("student"),
    student_layers: Annotated[int | None, typer.Option(min=1, help="Derive the student: embeddings + K evenly spaced teacher layers (last kept).")] = None,
    temperature: Annotated[float, typer.Option(min=0.01, help="Softmax temperature T of the KL term (scaled by T²).")] = 2.0,
    alpha: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Weight of the KL term; 1-α goes to cross-entropy (default 0.5, 1 without labels).")] = None,
    hidden_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the hidden-state MSE (0 = off).")] = 0.0,
    attention_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the attention-map MSE (0 = off).")] = 0.0,
    layer_map: Annotated[str | None, typer.Option(help="Teacher layer (0-based) per student layer, e.g. '1,3,5'.")] = None,
    projection: Annotated[bool, typer.Option(help="Learn a linear projection when hidden widths differ.")] = True,
    cache_dir: Annotated[Path | None, typer.Option(help="Where teacher logits are cached (default $COMPRESS_CACHE or ~/.cache/compress).")] = None,
    window: Annotated[int, typer.Option(callback=lambda v: _at_least(v, 8, "--window"), help="Causal LMs: tokens per packed training window (at least 8, at most the context length).")] = 256,
    block_size: Annotated[int | None, typer.Option(hidden=True, callback=lambda v: v if v is None else _at_least(v, 8, "--block-size"), help="Old name of --window.")] = None,
    max_blocks: Annotated[int | None, typer.Option(min=1, help="Causal LMs: at most this many training windows.")] = None,
    teacher_logits: Annotated[str, typer.Option(help="Causal LMs: topk (teacher's top-k cached once) or online (full teacher pass per step).")] = "topk",
    top_k: Annotated[int, typer.Option(min=1, help="Causal LMs: teacher tokens kept per position (topk).")] = 64,
    data: DataOpt = None, split: TrainSplitOpt = "train", eval_split: EvalSplitOpt = None,
    text_field: TextFieldOpt = "text", text_pair_field: TextPairFieldOpt = None, label_field: LabelFieldOpt = "label",
    limit: LimitTrainOpt = None, eval_limit: EvalLimitOpt = None,
    epochs: EpochsOpt = 3.0, max_steps: MaxStepsOpt = None, batch_size: BatchOpt = 32, lr: LrOpt = 1e-4,
    weight_decay: WdOpt = 0.01, warmup_ratio: WarmupOpt = 0.06, grad_clip: ClipOpt = 1.0, max_length: MaxLenOpt = 128,
    seed: SeedOpt = 0, patience: PatienceOpt = None, checkpoint_every: CkptOpt = None, resume: ResumeOpt = False,
    mixed_precision: PrecisionOpt = "auto", progress: ProgressOpt = True,
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Distill TEACHER into STUDENT: α·T²·KL(teacher ‖ student) + (1-α)·CE, plus optional hidden/attention losses;
    for causal LMs the KL is per next token, on --window-token windows of the --data text.

    Example: compress distill tiny:llama 1 --data corpus.txt --window 128 --max-steps 100 -o runs/student
    """
    from compress.core.paths import guard_output
    from compress.models.causal import is_causal
    from compress.passes.base import DataBundle
    from compress.passes.distill import DistillConfig
    from compress.pipeline.apply import apply_pass
    from compress.techniques.distill.student import check_student

    window = deprecated("--block-size", "--window", block_size, window, WINDOW_RENAMED)
    guard_output(output, [teacher, student, data])
    if student is not None and student.isdigit():
        student, student_layers = None, int(student)
    train, evals = _load_data(data, split, eval_split, text_field, text_pair_field, label_field, limit, eval_limit)
    t = _torch_only(load_model_from_options(teacher, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), teacher)
    s = _torch_only(load_model_from_options(student, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), student) if student else None
    if is_causal(t):  # one line naming --window before any work (the pass would name its config field)
        from compress.pipeline.preflight import check_window

        for m in (t, s) if s is not None else (t,):
            check_window(window, m, "--window")
    # Without labels the loss is all KL, except for causal LMs, whose labels are the next tokens.
    labelled = train.labels is not None or is_causal(t)
    cfg = pass_config(DistillConfig, **_train_settings(
        temperature=temperature, alpha=alpha if alpha is not None else (0.5 if labelled else 1.0),
        hidden_weight=hidden_weight, attention_weight=attention_weight, projection=projection,
        layer_map=_layer_map(layer_map), student_layers=student_layers,
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        warmup_ratio=warmup_ratio, grad_clip=grad_clip, max_length=max_length, seed=seed, patience=patience,
        checkpoint_every=checkpoint_every, resume=resume, mixed_precision=mixed_precision,
        block_size=window, max_blocks=max_blocks, top_k=top_k, teacher_logits=teacher_logits))
    check_student(s, cfg)  # the pass derives the student from the teacher when student_layers is given
    result = apply_pass(s if s is not None else t, cfg, output, data=DataBundle(train=train, eval=evals), teacher=t,
                        record={"command": "distill", "teacher": teacher, "student": student,
                                "config": cfg.model_dump()},
                        record_file="metrics.json", metrics_key=None, progress=progress, cache_dir=cache_dir)
    _done("distill", result.metrics, output)


def _layer_map(text: str | None) -> list[int] | None:
    from compress.core.errors import CompressError

    if not text:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise CompressError(f"--layer-map '{text}' is not a list of layer numbers", "pass e.g. --layer-map 1,3,5") from None


def _default_task(model: str) -> str | None:
    """`finetune minilm` means a classifier: the packaged encoder alone would load as feature-extraction."""
    return "text-classification" if model == "minilm" else None


def _torch_only(loaded, name):
    from compress.core.errors import CompressError
    from compress.models.artifacts import TorchModel

    if not isinstance(loaded, TorchModel):
        raise CompressError(f"'{name}' is an ONNX model and cannot be trained", "pass the PyTorch model it came from")
    return loaded


def _done(command: str, metrics: dict, output: Path) -> None:
    """Render on the main process only (the others trained the same weights; it alone saved them)."""
    from compress.training.loop import process_state

    if process_state().is_main_process:
        _render(f"{command} -> {output}", metrics, output)

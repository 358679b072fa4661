"""The typer app, the consoles and the option types shared by commands. Only typer, rich and pathlib here:
heavy libraries are imported inside commands so that `compress --help` stays fast."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

PIPED_WIDTH = 400  # without a terminal (CI logs, `| tee`) lines are as wide as their content, up to this


class _Console(Console):
    """A rich console that never cuts a figure: without a terminal it is PIPED_WIDTH wide (not the 80 columns
    rich assumes), and in a narrow terminal table cells fold onto more lines instead of ending in '…'."""

    @property
    def size(self):
        from rich.console import ConsoleDimensions

        size = super().size
        if not self.is_terminal and "COLUMNS" not in os.environ:
            return ConsoleDimensions(max(size.width, PIPED_WIDTH), size.height)
        return size

    def print(self, *objects, **kwargs) -> None:
        from rich.table import Table

        for obj in objects:
            if isinstance(obj, Table):
                for column in obj.columns:
                    column.overflow = "fold"
        super().print(*objects, **kwargs)


console = _Console()
err_console = _Console(stderr=True)


class _Group(TyperGroup):
    """Turns `CompressError` (bad input) into one line on stderr and exit code 2, with no traceback."""

    def invoke(self, ctx):
        from compress.core.errors import CompressError

        try:
            return super().invoke(ctx)
        except CompressError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: re-run the same command to resume where it stopped", err=True)
            raise typer.Exit(130) from None
        finally:
            console.stderr = False  # `--json -` sent rich output to stderr for one command only


app = typer.Typer(
    cls=_Group, no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=True,
    help="compress: distill, prune, factorize, quantize and export models, with proof they still work.",
)


def _version(value: bool) -> None:
    if value:
        from compress import __version__

        typer.echo(f"compress {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False,
          verbose: Annotated[bool, typer.Option("--verbose", help="Keep third-party output (transformers / hub "
                                                "progress bars and warnings, optimum and torch.onnx warnings, ONNX "
                                                "Runtime log lines) for debugging; also COMPRESS_VERBOSE=1.")] = False,
          ) -> None:
    """compress: distill, prune, factorize, quantize and export models, with proof they still work."""
    from compress.cli.progress import quiet_third_party, verbose_requested

    if not (verbose or verbose_requested()):
        quiet_third_party()

# --- shared options ----------------------------------------------------------------------------------------

ModelArg = Annotated[str, typer.Argument(help="Model: HF folder or hub id, 'minilm', 'smollm2', .pt/.onnx file, tiny:bert, tiny:llama.")]
TaskOpt = Annotated[str | None, typer.Option(help="Task (default: from the config): text-classification, feature-extraction, image-classification, text-generation (causal LMs).")]
NumLabelsOpt = Annotated[int | None, typer.Option(min=2, help="Classes of a new classification head.")]
ArchOpt = Annotated[str | None, typer.Option(help="Architecture of a bare state dict: HF config folder or builder name.")]
AllowPickleOpt = Annotated[bool, typer.Option(help="Allow loading a fully pickled module (runs code from the file).")]
TrustRemoteCodeOpt = Annotated[bool, typer.Option(help="Allow custom modelling code from the hub.")]

DataOpt = Annotated[str | None, typer.Option(help="Data: JSONL/CSV/TSV file, folder of split files, saved dataset, builtin:digits, hub name; causal LMs: also a .txt file (one document per paragraph).")]
SplitOpt = Annotated[str | None, typer.Option(help="Split (file stem in a data folder, or dataset split).")]
TextFieldOpt = Annotated[str, typer.Option(help="Field holding the text.")]
TextPairFieldOpt = Annotated[str | None, typer.Option(help="Field holding the second text of a pair.")]
LabelFieldOpt = Annotated[str, typer.Option(help="Field holding the integer label.")]
LimitOpt = Annotated[int | None, typer.Option(min=1, help="Use at most this many examples.")]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Output folder.")]
InputShapeOpt = Annotated[str | None, typer.Option(help="Vision/plain PyTorch models: shape of one input example, e.g. 64 or 3,32,32 (default: from the config or the first layer).")]

# --- training and recovery options: one group for finetune, distill and prune/factorize --recover --------------

TrainSplitOpt = Annotated[str, typer.Option("--split", help="Training split.")]
EvalSplitOpt = Annotated[str | None, typer.Option("--eval-split", help="Split scored after each epoch (best epoch kept), e.g. dev; with a .txt file, any name holds out its hash-split side.")]
EvalLimitOpt = Annotated[int | None, typer.Option(min=1, help="Use at most this many evaluation examples (causal LMs: texts).")]
LimitTrainOpt = Annotated[int | None, typer.Option(min=1, help="Use at most this many training examples.")]
EpochsOpt = Annotated[float, typer.Option(min=0.01, help="Passes over the training data (fractions allowed).")]
MaxStepsOpt = Annotated[int | None, typer.Option(min=1, help="Total optimizer steps (overrides --epochs).")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Examples per step (per process; causal LMs: token windows).")]
LrOpt = Annotated[float, typer.Option(min=0.0, help="Peak AdamW learning rate.")]
MaxLenOpt = Annotated[int, typer.Option(min=2, help="Classifiers: token truncation length (causal LMs read --window tokens).")]
WdOpt = Annotated[float, typer.Option(min=0.0, help="AdamW weight decay.")]
WarmupOpt = Annotated[float, typer.Option(min=0.0, max=0.99, help="Fraction of steps of linear warm-up.")]
ClipOpt = Annotated[float, typer.Option(min=0.0, help="Gradient-norm clip (0 = off).")]
SeedOpt = Annotated[int, typer.Option(help="Seed: same seed, same run.")]
PatienceOpt = Annotated[int | None, typer.Option(min=1, help="Stop after N evaluations without a better eval score (accuracy; causal LMs: held-out loss).")]
CkptOpt = Annotated[int | None, typer.Option(min=1, help="Save a resumable checkpoint every N steps.")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")]
PrecisionOpt = Annotated[str, typer.Option(help="auto, no, fp16 or bf16 (GPU only; CPU always trains in fp32).")]
ProgressOpt = Annotated[bool, typer.Option(help="Show the progress bar.")]


def load_model_from_options(model: str, task=None, num_labels=None, arch=None, allow_pickle=False,
                            trust_remote_code=False, input_shape: str | None = None):
    """`compress.models.load.load_model` with the CLI's option names. For a user's pickled or TorchScript module, or
    with `--input-shape`, prints the input shape the export will use and where it came from."""
    from compress.models.load import load_model

    loaded = load_model(model, task=task, num_labels=num_labels, arch=arch, allow_pickle=allow_pickle,
                        trust_remote_code=trust_remote_code)
    # A user's own module (pickled or TorchScript, or given a shape) has no config saying what it takes: say it.
    if loaded.kind == "torch" and not loaded.takes_tokens and (input_shape or loaded.builder in ("pickled", "torchscript")):
        from compress.models.modules import parse_shape

        if input_shape:
            loaded.input_shape = parse_shape(input_shape)
        shape, source = loaded.example_shape()
        console.print(f"input shape {','.join(map(str, shape))} per example: {source}")
    return loaded


def data_spec(data, split=None, text_field="text", text_pair_field=None, label_field="label", limit=None):
    """A `DataSpec` from the CLI's data options."""
    from compress.data.examples import DataSpec

    return DataSpec(source=data, split=split, text_field=text_field, text_pair_field=text_pair_field,
                    label_field=label_field, limit=limit)


def pass_config(cls, **kwargs):
    """Build a pass config from CLI options; a pydantic error becomes one CompressError line (exit 2)."""
    from pydantic import ValidationError

    from compress.core.errors import CompressError

    try:
        return cls(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        where = (".".join(str(x) for x in err["loc"]) or "options").replace("_", "-")
        if err["type"] == "literal_error":
            raise CompressError(f"unknown {where} '{err['input']}'", f"use one of: {err['ctx']['expected']}") from None
        raise CompressError(f"invalid {where}: {err['msg']}", "see --help for the allowed values") from None


# --- `--json PATH`, or `--json -` for stdout -------------------------------------------------------------------

JSON_STDOUT = "-"


def json_destination(path: Path | None, inputs=()) -> None:
    """Prepare `--json`: a file is guarded like any output; `-` keeps stdout for the JSON alone, so everything
    rich prints goes to stderr until the command ends (`_Group.invoke` restores it)."""
    if path is None:
        return
    if str(path) == JSON_STDOUT:
        console.stderr = True
        return
    from compress.core.paths import guard_output

    guard_output(path, list(inputs), kind="file", what="--json")


def write_json(path: Path | None, data) -> None:
    """Write `--json`'s data: to stdout for `-`, else to the file."""
    import json

    if path is None:
        return
    text = json.dumps(data, indent=2, default=float)
    if str(path) == JSON_STDOUT:
        typer.echo(text)
    else:
        path.write_text(text)


WINDOW_RENAMED = " (--block-size now means only the quantization block of `compress quantize`)"


def deprecated(old: str, new: str, value, current, why: str = ""):
    """A hidden old option name still works: its value wins, with a one-line note on stderr."""
    if value is None:
        return current
    typer.echo(f"note: {old} is deprecated here; use {new}{why}", err=True)
    return value

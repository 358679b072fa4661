"""`compress run` (a recipe end to end), `compress report` (rebuild or compare reports), `compress passes`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compress.cli.app import app, console


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML, e.g. recipes/quickstart.yaml.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Report root: the report goes to OUTPUT/<recipe name>/.")] = Path("reports"),
    runs: Annotated[Path, typer.Option(help="Stage cache root: stages live in RUNS/<recipe name>/<stage>-<key>/.")] = Path("runs"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate the recipe (data splits, eval domains, token windows against the model's context) and print the plan; run no stage.")] = False,
    fresh: Annotated[bool, typer.Option(help="Ignore the stage cache and recompute every stage.")] = False,
    omp_wait_policy: Annotated[str, typer.Option(help="OMP_WAIT_POLICY for training and evaluation in this process "
                                                 "(unless already set): PASSIVE avoids 10-20x PyTorch slowdowns when "
                                                 "other processes share the CPU; default leaves it unset (the OpenMP "
                                                 "runtime's own spin-then-sleep). Bench workers never inherit it: each "
                                                 "sets its own per backend (eval.latency.wait_policy, default native) "
                                                 "and the results record it per measurement.")] = "PASSIVE",
) -> None:
    """Run RECIPE: every stage (resuming from the cache), evaluation, one latency bench, and the report.

    Example: compress run recipes/quickstart.yaml --dry-run
    """
    import os

    # Must be set before OpenMP starts (torch is imported while the recipe's passes load). Bench workers do not
    # inherit it: `latency.worker_env` gives each the policy its backend's users run with.
    if omp_wait_policy.lower() != "default":
        os.environ.setdefault("OMP_WAIT_POLICY", omp_wait_policy.upper())
    from compress.pipeline import runner as pipeline
    from compress.pipeline.recipe import load_recipe
    from compress.report import render

    plan = load_recipe(recipe)
    pipeline.check_data(plan)
    if dry_run:
        from compress.pipeline.preflight import validate_recipe

        validate_recipe(plan)  # what the run checks before its first stage (it loads the data and, for decoders, the model)
        console.print(plan_table(plan, pipeline.cached_stages(plan, runs)))
        console.print(f"[green]ok[/]: {recipe} is valid; run it with `compress run {recipe}`")
        return
    from compress.core.paths import guard_output
    from compress.report import write

    guard_output(output / plan.name, [recipe, *pipeline.recipe_inputs(plan)])
    with _Display() as display:
        results = pipeline.run(plan, runs_dir=runs, fresh=fresh, on_event=display.event)
    written = write(results, output / plan.name)
    console.print(render.stage_table(written.results))
    console.print(written.results["summary"]["note"])
    console.print(f"report: {written.markdown}, {written.html}, {written.folder / 'results.json'}")


@app.command("report")
def report(
    dirs: Annotated[list[Path], typer.Argument(help="Report folders (holding results.json).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="With several folders: also write the comparison as Markdown here.")] = None,
) -> None:
    """Rebuild report.md/report.html from one folder's results.json, or compare several runs in one table.

    Example: compress report reports/quickstart reports/minilm-sst2 -o compare.md
    """
    from compress.report import rebuild, render
    from compress.report.build import build
    from compress.report.schema import load_results

    if len(dirs) == 1:
        written = rebuild(dirs[0])
        console.print(render.stage_table(written.results))
        console.print(f"rebuilt: {written.markdown}, {written.html}")
        return
    runs = [build(load_results(d)) for d in dirs]
    console.print(render.compare_table(runs))
    if output is not None:
        import os

        from compress.core.paths import guard_output

        guard_output(output, dirs, kind="file")

        tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
        tmp.write_text(render.compare_markdown(runs, [str(d) for d in dirs]))
        os.replace(tmp, output)
        console.print(f"comparison: {output}")


@app.command()
def passes(name: Annotated[str | None, typer.Argument(help="Show only this pass.")] = None) -> None:
    """List the registered passes: what they take and give, the data they need, and every config option.

    Example: compress passes quantize_ort
    """
    from rich.table import Table

    from compress.passes.base import get_pass, list_passes

    infos = [get_pass(name)] if name else list_passes()
    for info in infos:
        table = Table("option", "type", "default", "description", title=f"{info.name}: {' | '.join(info.accepts)} -> "
                      f"{info.returns}; needs {', '.join(info.needs) or 'nothing'}", title_justify="left")
        for field, kind, default, description in _options(info.config):
            table.add_row(field, kind, default, description)
        doc = (info.config.__doc__ or "").strip().splitlines()
        console.print(table)
        if doc:
            console.print(f"  [dim]{doc[0]}[/]")


def _options(config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(option, type, default, description) of every field, nested configs (e.g. `recover.epochs`) expanded."""
    import typing

    from pydantic import BaseModel

    rows = []
    for field, spec in config.model_fields.items():
        if field == "type" and not prefix:
            continue
        default = "(required)" if spec.is_required() else repr(spec.get_default(call_default_factory=True))
        rows.append((prefix + field, _type_name(spec.annotation), default, spec.description or ""))
        for arg in (spec.annotation, *typing.get_args(spec.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                rows += _options(arg, f"{prefix}{field}.")
    return rows


def _type_name(annotation) -> str:
    """`Literal['a', 'b']` -> `a|b`, `int | None` -> `int|None`, `list[str]` -> `list[str]`."""
    import typing

    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return "|".join(str(a) for a in args)
    if args and typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return "|".join(_type_name(a) for a in args)
    if args:
        return f"{getattr(typing.get_origin(annotation), '__name__', 'list')}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


class _Display:
    """Progress of a run: one line per stage (passes may show their own bars), then eval and bench progress
    (`compress.cli.progress`: bars in a terminal, plain lines in a log)."""

    def __enter__(self):
        from compress.cli.progress import progress

        # No bar is drawn before the first eval event: a pass's own progress bar may be live during the stages.
        self._block = progress(console)
        self.on_progress = self._block.__enter__()
        return self

    def __exit__(self, *exc):
        return self._block.__exit__(*exc)

    def event(self, kind: str, **info) -> None:
        if kind == "stage":
            n = f"[{info['index'] + 1}/{info['total']}]"
            if info["state"] == "cached":
                console.print(f"{n} {info['name']}: [dim]cached[/]")
            elif info["state"] == "start":
                console.print(f"{n} {info['name']}: running")
            else:
                console.print(f"{n} {info['name']}: [green]done[/]")
        elif kind == "eval":
            self.on_progress("evaluating", info["index"], info["total"], detail=info["name"])
        elif kind == "bench":
            if "evaluating" in self.on_progress.stages:  # every stage was scored once timing starts
                total = self.on_progress.stages["evaluating"].total
                self.on_progress("evaluating", total, total)
            self.on_progress("timing (one process per stage, round-robin)", info["done"], info["total"])


def plan_table(recipe, cached: dict[str, bool] | None = None):
    """The dry-run plan, one line per stage (readable at any terminal width):
    `3. baseline-int8 (baseline) <- teacher: quantize_ort [torch>onnx] needs -; to run`."""
    from rich.console import Group
    from rich.text import Text

    from compress.pipeline.recipe import plan as plan_steps

    lines = [Text(f"plan: {recipe.name} (base model {recipe.model}, {len(recipe.stages)} stages)", style="bold")]
    teacher = recipe.teacher_stage()
    for i, step in enumerate(plan_steps(recipe)):
        role = " (teacher)" if step.name == teacher else (" (baseline)" if step.name in recipe.baselines else "")
        status = "cached" if (cached or {}).get(step.name) else "to run"
        if not (step.evaluate or step.name == teacher):
            status += ", not in report"
        line = Text(f"{i + 1:>2}. ")
        line.append(step.name + role, style="cyan")
        line.append(f" <- {step.input}: {step.pass_type} [{step.input_kind}>{step.output_kind}] "
                    f"needs {','.join(step.needs) or '-'}; {status}")
        lines.append(line)
    return Group(*lines)

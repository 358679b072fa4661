"""`compress search`: the recipe's accuracy-budget search (Optuna trials through the pipeline) and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compress.cli.app import app, console


@app.command()
def search(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML with a `search:` block, e.g. recipes/minilm-sst2-search.yaml.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Report root: the report goes to OUTPUT/<recipe name>-search/ (OUTPUT/<recipe name>/ when the name already ends in -search).")] = Path("reports"),
    runs: Annotated[Path, typer.Option(help="Stage cache root; the study and best/ live in RUNS/<recipe name>/search/.")] = Path("runs"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate the recipe and its search block, print the space; load no model.")] = False,
    fresh: Annotated[bool, typer.Option(help="Start a new study (the stage cache is kept).")] = False,
    trials_only: Annotated[bool, typer.Option(help="Stop after the trials: no finalist bench, no test scoring, no report.")] = False,
    omp_wait_policy: Annotated[str, typer.Option(help="OMP_WAIT_POLICY for training and evaluation (unless already set); "
                                                 "bench workers always set their own per backend. 'default' leaves it unset.")] = "PASSIVE",
    progress: Annotated[bool, typer.Option(help="Show each pass's progress bar (training steps) inside the trials.")] = True,
    storage: Annotated[str | None, typer.Option(help="Optuna RDB URL of the study, e.g. sqlite:///shared/study.db or "
                                                "postgresql://user@host/db: workers (terminals, machines) given the "
                                                "same URL share one study. Default: RUNS/<recipe name>/search/study.db.")] = None,
    study_name: Annotated[str | None, typer.Option(help="The study's name in --storage (default: the recipe's name).")] = None,
) -> None:
    """Search RECIPE's space for the fastest (or smallest) model within its accuracy budget; resumable (Ctrl-C, kill).

    Distributed: run the same command on each machine with one --storage, e.g.
    `compress search recipes/minilm-sst2-search.yaml --storage postgresql://user@db-host/compress`;
    each worker runs its own trials of the one study, then finalizes once none is left running.

    Exit codes: 0 done; 2 bad input, or no trial met the budget (nothing is written to best/); 130 Ctrl-C
    (re-run the same command to resume).
    """
    import os

    if omp_wait_policy.lower() != "default":  # before torch starts OpenMP; bench workers override it
        os.environ.setdefault("OMP_WAIT_POLICY", omp_wait_policy.upper())
    from compress.core.errors import CompressError
    from compress.pipeline import runner as pipeline
    from compress.pipeline.recipe import expand_space, load_recipe, space_size

    plan = load_recipe(recipe)
    if plan.search is None:
        raise CompressError(f"{recipe}: no search block", "add `search:` (see recipes/minilm-sst2-search.yaml)")
    pipeline.check_data(plan)
    if dry_run:
        _print_space(plan, space_size(plan.search), expand_space(plan.search)[:1])
        console.print(f"[green]ok[/]: {recipe} is valid; search it with `compress search {recipe}`")
        return
    from compress.core.paths import guard_output
    from compress.pipeline import search as lib
    from compress.report.search import write

    out = output / (plan.name if plan.name.endswith("-search") else f"{plan.name}-search")
    guard_output(out, [recipe, *pipeline.recipe_inputs(plan)])
    try:
        results = lib.search(plan, runs_dir=runs, fresh=fresh, on_event=_event, finalize=not trials_only,
                             progress=progress, storage=storage, study_name=study_name)
    except lib.SearchInterrupted as e:
        typer.echo(f"interrupted after {e.trials} trial{'' if e.trials == 1 else 's'}; "
                   "re-run the same command to resume", err=True)
        raise typer.Exit(130) from None
    if not trials_only:
        folder = write(results, out)
        console.print(f"report: {folder / 'report.md'}, {folder / 'report.html'}, {folder / 'search.json'}")
    best = lib.search_dir(plan, runs) / lib.BEST_DIR
    feasible = sum(r["feasible"] for r in results["trials"])
    if feasible == 0:  # nothing to point at: best/ was never written
        done = sum(r["state"] in ("complete", "pruned", "fail") for r in results["trials"])
        budget = (f"max_accuracy_drop {plan.search.max_accuracy_drop}" if plan.search.max_accuracy_drop is not None
                  else f"max_perplexity_increase {plan.search.max_perplexity_increase}")
        raise CompressError(f"no trial met the budget ({budget} on data.validation) in {done} trial(s); no best model",
                            "widen search.space, relax the budget, or raise search.trials, then re-run "
                            "(finished trials are kept)")
    if best.exists():
        console.print(f"best {'so far' if trials_only else 'model'}: {best}")
    else:  # trials only, and the best trial ran on another machine (the finalization builds it here)
        console.print("best so far: a trial of another worker; its model is in that worker's --runs folder")


def _print_space(plan, size: int, first: list[dict]) -> None:
    from rich.table import Table

    s = plan.search
    table = Table("option", "values")
    for key, values in s.space.items():
        table.add_row(key, ", ".join(map(str, values)))
    console.print(f"search of '{plan.name}': {size} settings, {s.trials} trials, sampler {s.sampler}")
    console.print(table)
    budget = (f"max_accuracy_drop {s.max_accuracy_drop}" if s.max_accuracy_drop is not None
              else f"max_perplexity_increase {s.max_perplexity_increase}")
    fidelity = "full fidelity only" if s.fidelity is None else (
        f"low fidelity first (validation_limit {s.fidelity.validation_limit}, overrides "
        f"{s.fidelity.overrides or '{}'}, pruner {s.fidelity.pruner})")
    console.print(f"objective: minimize {s.objective}; budget: {budget} on data.validation; {fidelity}; "
                  f"finalists {s.finalists}{'; time ' + str(s.max_hours) + ' h' if s.max_hours else ''}")


def _event(kind: str, **info) -> None:
    if kind == "phase":
        if info["name"] == "trials":
            again = f", re-running interrupted trial(s) {info['retried']}" if info.get("retried") else ""
            console.print(f"trials: {info['finished']}/{info['total']} finished{again}")
        elif info["name"] == "waiting":
            console.print(f"waiting for trial(s) {info['running']} of other workers of this study")
        elif info["name"] == "finalists":
            console.print(f"timing {info['count']} finalist(s) with the teacher and the baselines (one interleaved bench)")
        else:
            console.print("selection done: scoring the test split once")
        return
    row = info["row"]
    figures = row["full"] or row["low"] or {}
    loss = f"Δ {-100 * figures['loss']:+.2f}" if "loss" in figures else ""
    objective = f"objective {figures['objective']:.4g}" if "objective" in figures else ""
    note = row["stopped"] or row["error"] or ("within budget" if row["feasible"] else "")
    console.print(f"trial {info['number']}: {info['state']} ({row['fidelity'] or '-'}) {loss} {objective} {note}".rstrip())

"""Run one search trial: its recipe, its score on the validation split (quality, latency, size), its objective."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.core.errors import CompressError
from compress.evaluation.latency.bench import BenchSpec
from compress.pipeline.recipe import Recipe, ancestors, apply_settings, parse_recipe, search_candidate
from compress.pipeline.results import digest
from compress.pipeline.study import best_trial, kept

BUDGET = "budget"  # the Optuna constraint: loss minus budget (feasible when <= 0), which TPE samples around
LOCK_RETRY_S = 2.0  # another terminal's trial holds the run folder: wait this long between tries
Event = Callable[..., None]  # on_event(kind, **info): "phase" (name), "trial" (number, state, row)


@dataclass
class SearchContext:
    """What every trial (and the finalization) of one search shares."""

    recipe: Recipe
    runs_dir: Path
    folder: Path
    emit: Event
    progress: bool

    @property
    def causal(self) -> bool:
        return self.recipe.search.max_perplexity_increase is not None

    @property
    def budget(self) -> float:
        s = self.recipe.search
        return s.max_perplexity_increase if self.causal else s.max_accuracy_drop


# --- trial recipes -------------------------------------------------------------------------------------------


def trial_recipe(recipe: Recipe, settings: dict[str, Any], *, fidelity: str = "full", split: str = "validation",
                 targets: list[str] | None = None) -> Recipe:
    """The recipe one trial runs: `settings` applied (plus the low-fidelity overrides), only the stages the
    targets are made from, only the targets evaluated, no timing (the search times candidates itself).

    Args:
        recipe: the recipe with its search block.
        settings: {dotted key: value} from the space.
        fidelity: "low" applies `search.fidelity.overrides` and scores a subset of the validation split.
        split: "validation" scores `data.validation` in place of `data.eval` (selection); "eval" keeps the eval
            split (the one final scoring).
        targets: stages to evaluate (default: the candidate).
    """
    search = recipe.search
    low = fidelity == "low" and search.fidelity is not None
    data = apply_settings(recipe, {**settings, **(search.fidelity.overrides if low else {})})
    shaped = parse_recipe(data)  # the graph after skipped stages were removed
    targets = targets or [search_candidate(recipe)]
    keep: set[str] = set()
    for name in targets:
        keep.update(ancestors(shaped, name))
    data["stages"] = [s for s in data["stages"] if s["name"] in keep]
    for s in data["stages"]:
        s["evaluate"] = s["name"] in targets
    data["baselines"] = [b for b in data["baselines"] if b in targets]
    data["goals"] = None
    data["eval"]["latency"] = None
    if split == "validation":
        validation = dict(data["data"]["validation"])
        limit = search.fidelity.validation_limit if low else None
        if limit is not None:
            if recipe.task == "text-generation":
                data["eval"]["max_blocks"] = min(data["eval"]["max_blocks"], limit)
            else:
                validation["limit"] = min(validation["limit"] or limit, limit)
        data["data"]["eval"] = validation
    return parse_recipe(data)


def run_pipeline(recipe: Recipe, runs_dir: Path, progress: bool) -> dict:
    """`pipeline.run`, waiting while another terminal's trial holds the run folder (one run per folder)."""
    from compress.pipeline import runner as pipeline

    while True:
        try:
            return pipeline.run(recipe, runs_dir=runs_dir, progress=progress)
        except CompressError as e:
            if "in use by another compress run" not in e.problem:
                raise
            time.sleep(LOCK_RETRY_S)


def trial_spec(recipe: Recipe) -> BenchSpec | None:
    """Latency protocol of a trial: `search.trial_latency`, else `eval.latency` at the primary shape, one round."""
    if recipe.search.trial_latency is not None:
        return recipe.search.trial_latency
    spec, primary = recipe.eval.latency, recipe.eval.primary_shape()
    if spec is None:
        return None
    return spec.model_copy(update={"batch_sizes": [primary.batch_size], "seq_lens": [primary.seq_len],
                                   "devices": [primary.device], "rounds": 1,
                                   "iters": max(1, min(spec.iters, 20))})


def primary_row(rows: list[dict], recipe: Recipe, label: str) -> dict | None:
    """The bench row of `label` at the recipe's primary shape (or its first row when none is set)."""
    primary = recipe.eval.primary_shape()
    for row in rows:
        if row["model"] == label and (primary is None or (row["device"], row["batch_size"], row["seq_len"]) ==
                                      (primary.device, primary.batch_size, primary.seq_len)):
            return row
    return None


def load_kwargs(recipe: Recipe) -> dict:
    return {k: v for k, v in {"task": recipe.task, "num_labels": recipe.num_labels}.items() if v}


# --- one trial -------------------------------------------------------------------------------------------------


def score(ctx: SearchContext, settings: dict[str, Any], fidelity: str) -> dict:
    """Run one setting at one fidelity on the validation split: quality vs the teacher, latency, size."""
    recipe = ctx.recipe
    start = time.perf_counter()
    candidate = search_candidate(recipe)
    results = run_pipeline(trial_recipe(recipe, settings, fidelity=fidelity), ctx.runs_dir, ctx.progress)
    teacher = results["stages"][0]
    stage = next(s for s in results["stages"] if s["name"] == candidate)
    row = {"fidelity": fidelity, "stage": candidate, "path": stage["path"], "kind": stage["kind"],
           "size_mb": stage["size_mb"], "params": stage["params"], "teacher_path": teacher["path"],
           "examples": results["eval"]["examples"]}
    if ctx.causal:
        row.update(perplexity=stage["perplexity"], teacher_perplexity=teacher["perplexity"],
                   loss=stage["perplexity"] / teacher["perplexity"] - 1.0)
    else:
        row.update(accuracy=stage["accuracy"], teacher_accuracy=teacher["accuracy"],
                   loss=teacher["accuracy"] - stage["accuracy"])
    row["violation"] = row["loss"] - ctx.budget  # <= 0: within the budget
    if recipe.search.objective == "latency":
        timing = _time_candidate(ctx, stage["path"], candidate)
        row.update(p50_ms=timing["p50_ms"], latency=timing)
        row["objective"] = timing["p50_ms"]
    else:
        row["objective"] = stage["size_mb"]
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _time_candidate(ctx: SearchContext, source: str, label: str) -> dict:
    """The candidate alone under the trial protocol, cached by its (content-keyed) stage path and the spec."""
    from compress.evaluation.latency.bench import bench

    spec = trial_spec(ctx.recipe)

    def measure() -> dict:
        timing = bench([source], spec, labels=[label], load_kwargs=load_kwargs(ctx.recipe))
        if not timing["results"]:
            raise CompressError(f"the bench measured nothing for '{label}' on {spec.devices}", "check the latency devices")
        row = primary_row(timing["results"], ctx.recipe, label) or timing["results"][0]
        return {k: v for k, v in row.items() if k != "model"}

    return kept(ctx.folder / "latency" / f"{digest({'source': source, 'spec': spec.model_dump()})}.json", measure)[0]


def _sampled(trial, space: dict[str, list]) -> dict[str, Any]:
    """Settings of one trial; values Optuna cannot store (lists, mappings) are sampled by their index."""
    settings = {}
    for key, values in space.items():
        if all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            settings[key] = trial.suggest_categorical(key, values)
        else:
            settings[key] = values[trial.suggest_categorical(key, list(range(len(values))))]
    return settings


def objective(ctx: SearchContext, study_getter: Callable[[], Any]):
    """The Optuna objective: a low-fidelity run first (stopped early when it cannot win), then the full one."""
    import optuna

    search = ctx.recipe.search

    def objective(trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        settings = _sampled(trial, search.space)
        trial.set_user_attr("settings", settings)
        try:
            if search.fidelity is not None and search.fidelity.pruner != "none":
                low = score(ctx, settings, "low")
                trial.set_user_attr("low", low)
                trial.report(low["objective"], 0)
                reason = _stop_reason(ctx, low, study_getter())
                if reason is None and search.fidelity.pruner == "halving" and trial.should_prune():
                    reason = "successive halving: slower than the trials kept at this rung"
                if reason is not None:
                    trial.set_user_attr("stopped", reason)
                    trial.set_constraint(BUDGET, low["violation"])  # TPE learns where the budget holds
                    raise optuna.TrialPruned(reason)
            full = score(ctx, settings, "full")
            trial.set_user_attr("full", full)
            trial.set_constraint(BUDGET, full["violation"])  # feasible when <= 0
            return full["objective"]
        except CompressError as e:
            trial.set_user_attr("error", str(e))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # re-run on resume
            raise

    return objective


def _stop_reason(ctx: SearchContext, low: dict, study) -> str | None:
    """Why a low-fidelity trial cannot be chosen, or None when it may still win (front rule)."""
    slack = ctx.recipe.search.fidelity.slack
    if low["violation"] > slack:
        what = f"perplexity +{100 * low['loss']:.2f}%" if ctx.causal else f"accuracy drop {100 * low['loss']:.2f} pt"
        return f"{what} at low fidelity is over the budget plus slack"
    best = best_trial(study)
    if best is not None and low["objective"] >= best.user_attrs["full"]["objective"]:
        return f"no better than trial {best.number} ({best.user_attrs['full']['objective']:.4g})"
    return None

"""Accuracy-budget search across passes: Optuna trials over a recipe's `search.space`, the fastest (or smallest)
model within the budget, chosen on the validation split and scored once on the eval split.

Each trial is the recipe with the sampled settings, run through `compress.pipeline.runner.run`, so trials share the
stage cache (every trial with the same distilled student reuses it) and a trial killed mid-training resumes
from its checkpoint. During selection the trial recipes score `data.validation` in place of `data.eval`: the
eval (test) split is never read until the chosen model, the teacher and the baselines are scored on it once.

    runs/<recipe>/search/study.db     Optuna's SQLite study: a killed search resumes, two terminals share it
                                      (or `storage`: any Optuna RDB URL, shared by workers on several machines)
    runs/<recipe>/search/best/        the best model so far that meets the budget, replaced atomically
    runs/<recipe>/search/latency/     per-candidate trial timings (same model, same protocol: timed once)

Fidelity: with `search.fidelity`, every trial first runs cheap (low-fidelity overrides, a subset of the
validation split); only a trial that can still be chosen goes on to full fidelity (see `SearchFidelity`).

This module runs the loop and the finalization; one trial is `trial`, the study and `best/` on disk are `study`.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from compress.core.errors import CompressError
from compress.evaluation.latency.bench import BenchSpec
from compress.pipeline.recipe import Recipe, recipe_dict, search_candidate, space_size
from compress.pipeline.results import digest
from compress.pipeline.study import BEST_DIR as BEST_DIR  # the CLI prints where `best/` is
from compress.pipeline.study import (
    best_trial,
    check_storage,
    db_errors,
    drop_study,
    file_lock,
    finished,
    kept,
    now,
    open_study,
    publish_best,
    read_best,
    restore_best,
    resume_study,
    running_elsewhere,
    search_dir,
    spent_seconds,
    storage_error,
    storage_url,
    trial_row,
    trial_rows,
)
from compress.pipeline.trial import (
    Event,
    SearchContext,
    load_kwargs,
    objective,
    primary_row,
    run_pipeline,
    trial_recipe,
    trial_spec,
)

log = logging.getLogger(__name__)
WAIT_S = 2.0  # a worker done with its trials polls this often for the other workers' running trials


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search, with how many trials the study has finished (a re-run resumes from there)."""

    def __init__(self, trials: int):
        super().__init__(trials)
        self.trials = trials


def search(recipe: Recipe, *, runs_dir: str | Path = "runs", fresh: bool = False, on_event: Event | None = None,
           progress: bool = False, finalize: bool = True, storage: str | None = None,
           study_name: str | None = None) -> dict:
    """Run (or resume) the search of `recipe` and return its results (what `report.search.write` renders).

    Args:
        recipe: a validated recipe with a `search` block.
        runs_dir: root of the stage cache; the search lives in `runs_dir/<recipe>/search/`.
        fresh: delete this recipe's study and `best/` first (the stage cache is kept).
        on_event: callback `(kind, **info)`: "phase" (name), "trial" (number, state, row).
        progress: let passes show their own progress bars.
        finalize: after the trials, re-time the finalists together, choose, and score the eval split once.
        storage: Optuna RDB URL of the study (default: SQLite in the search folder). Workers sharing it run their
            own trials of one study; each finalizes once all trials are done (once in all, when they share
            `runs_dir`).
        study_name: the study's name in `storage` (default: the recipe's name).

    Raises:
        SearchInterrupted: Ctrl-C (a KeyboardInterrupt); the running trial is re-run first by the next call.
    """
    if recipe.search is None:
        raise CompressError(f"recipe '{recipe.name}' has no search block", "add `search:` (see recipes/minilm-sst2-search.yaml)")
    if recipe.search.objective == "latency" and trial_spec(recipe) is None:
        raise CompressError("search.objective latency needs eval.latency or search.trial_latency",
                            "set one, or use objective: size")
    spec = trial_spec(recipe)
    if spec is not None and recipe.search.objective == "latency" and spec.devices[0] == "cuda":
        from compress.runtime.ort import cuda_available

        if not cuda_available():
            raise CompressError("the search times candidates on cuda, but no CUDA device is present",
                                "set eval.primary.device (or search.trial_latency.devices) to cpu")
    from compress.core.paths import guard_output
    from compress.pipeline.runner import recipe_inputs

    runs_dir = Path(runs_dir)
    folder = search_dir(recipe, runs_dir)
    guard_output(folder, recipe_inputs(recipe), replace=False, what="--runs")
    url = storage_url(folder, storage)
    if not (fresh and storage is None):  # --fresh deletes the default study file, whatever it holds
        check_storage(url, default=storage is None)  # before anything is deleted
    if fresh:
        if storage is not None:
            drop_study(recipe, storage, study_name)
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    restore_best(folder)
    emit = on_event or (lambda kind, **info: None)
    ctx = SearchContext(recipe, runs_dir, folder, emit, progress)
    study = open_study(recipe, folder, storage, study_name)
    started = time.perf_counter()
    try:
        retried = resume_study(study)
        emit("phase", name="trials", finished=finished(study), total=recipe.search.trials, retried=retried)
        _run_trials(ctx, study)
        return _results(ctx, study, started, time.perf_counter() - started, finalize)
    except KeyboardInterrupt:
        raise SearchInterrupted(finished(study)) from None
    except db_errors() as e:  # the storage went away mid-search (server down, disk full)
        raise storage_error(url, e, default=storage is None) from None


def _results(ctx: SearchContext, study, started: float, trial_seconds: float, finalize: bool) -> dict:
    """The search's results: its trials and, with `finalize`, the choice and its one scoring of the eval split."""
    recipe, folder = ctx.recipe, ctx.folder
    results = {"schema": 1, "kind": "search", "recipe": recipe.name, "description": recipe.description,
               "created": now(), "search": recipe.search.model_dump(mode="json"), "space_size": space_size(recipe.search),
               "candidate": search_candidate(recipe), "budget_metric": "perplexity" if ctx.causal else "accuracy",
               "run_dir": str(folder), "trials": trial_rows(study), "recipe_config": recipe_dict(recipe)}
    results["cost"] = {"this_session_seconds": round(trial_seconds, 1), "trial_seconds": round(spent_seconds(study), 1)}
    if finalize:
        with file_lock(folder / ".final.lock"):  # workers sharing this folder: the first finalizes, the others reuse
            results.update(_finalize(ctx, study))
        # A re-run of a finished search reuses the kept bench and test scores: the cost is the run that made them.
        if results.pop("finalized_now", False) or "final_seconds" not in study.user_attrs:
            study.set_user_attr("final_seconds", round(time.perf_counter() - started - trial_seconds, 1))
        results["cost"]["final_seconds"] = study.user_attrs["final_seconds"]
    results["cost"]["total_seconds"] = round(results["cost"]["trial_seconds"] + results["cost"].get("final_seconds", 0), 1)
    return results


def _run_trials(ctx: SearchContext, study) -> None:
    """Run trials until the study has `search.trials` finished ones (or `max_hours` is spent), counting the trials
    other workers of the same study are running; then wait for those, since one may fail and need re-running."""
    import optuna

    search = ctx.recipe.search
    waiting_for: list[int] = []

    def after(st, trial) -> None:
        _update_best(ctx, st)
        ctx.emit("trial", number=trial.number, state=trial.state.name.lower(), row=trial_row(trial))
        if finished(st) + len(running_elsewhere(st)) >= search.trials:
            st.stop()

    while True:
        timeout = None
        if search.max_hours is not None:
            timeout = search.max_hours * 3600 - spent_seconds(study)
            if timeout <= 0:
                return
        others = running_elsewhere(study)
        remaining = search.trials - finished(study) - len(others)
        if remaining > 0 and not _grid_done(study):
            study.optimize(objective(ctx, lambda: study), n_trials=remaining, timeout=timeout,
                           catch=(CompressError,), callbacks=[after])
            continue  # count again: the other workers went on meanwhile
        if not others:
            return
        if others != waiting_for:
            waiting_for = others
            ctx.emit("phase", name="waiting", running=others)
        time.sleep(WAIT_S)
        optuna.storages.fail_stale_trials(study)  # a worker that died on another machine: its trial runs again
        resume_study(study)  # ... or on this one, or it was Ctrl-C'd


def _grid_done(study) -> bool:
    """A grid search whose every setting has run, with no re-run queued: more trials would only repeat them."""
    from optuna.samplers import GridSampler
    from optuna.trial import TrialState

    return isinstance(study.sampler, GridSampler) and study.sampler.is_exhausted(study) and \
        not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def _update_best(ctx: SearchContext, study) -> None:
    """After each trial: publish the best trial so far that meets the budget, if `best/` holds another."""
    with file_lock(ctx.folder / ".best.lock"):  # workers may finish trials at once: read the best inside the lock
        best = best_trial(study)
        if best is None:
            return
        current = read_best(ctx.folder)
        if current is not None and current.get("trial") == best.number and not current.get("final"):
            return
        row = best.user_attrs["full"]
        if not Path(row["path"]).exists():
            return  # a trial of a worker on another machine: its model is there (the finalization builds it here)
        info = {"trial": best.number, "settings": best.user_attrs["settings"], "phase": "trials", "final": False}
        _publish(ctx, row, info)


def _publish(ctx: SearchContext, row: dict, info: dict) -> None:
    """`best/` := the trial's model, with the recipe that makes it (scoring the eval split)."""
    publish_best(ctx.folder, row, info, trial_recipe(ctx.recipe, info["settings"], split="eval"))


# --- finalization ----------------------------------------------------------------------------------------------


def _finalize(ctx: SearchContext, study) -> dict:
    """Finalists re-timed in one interleaved bench with the teacher and the baselines; the choice (validation
    figures only); then the one scoring of the eval split for the chosen model, the teacher and the baselines."""
    recipe = ctx.recipe
    rows = [r for r in trial_rows(study) if r["feasible"]]
    rows.sort(key=lambda r: (r["full"]["objective"], r["number"]))
    finalists, seen = [], set()
    for r in rows:
        if r["full"]["path"] not in seen:
            seen.add(r["full"]["path"])
            finalists.append(r)
    finalists = finalists[: recipe.search.finalists]
    if not finalists:
        return {"chosen": None, "finalists": [], "references": {}, "test": None,
                "note": "no trial met the budget on the validation split: widen the space or the budget"}
    finalists = [_here(ctx, r) for r in finalists]
    ctx.emit("phase", name="finalists", count=len(finalists))
    refs = {}
    if recipe.baselines:  # the baselines on validation: their models (for the bench) and their validation scores
        ref_results = run_pipeline(trial_recipe(recipe, {}, targets=list(recipe.baselines)), ctx.runs_dir, ctx.progress)
        refs = {s["name"]: s for s in ref_results["stages"][1:]}
    teacher_path = finalists[0]["full"]["teacher_path"]
    labels = ["teacher", *refs, *(f"trial-{r['number']}" for r in finalists)]
    sources = [teacher_path, *(s["path"] for s in refs.values()), *(r["full"]["path"] for r in finalists)]
    spec = recipe.eval.latency or trial_spec(recipe)
    timing, measured = _final_bench(ctx, sources, labels, spec) if spec is not None else (None, False)
    primary = {label: primary_row(timing["results"], recipe, label) if timing else None for label in labels}
    for r in finalists:
        r["final_p50_ms"] = (primary[f"trial-{r['number']}"] or {}).get("p50_ms")
    key = (lambda r: (r["final_p50_ms"], r["number"])) if recipe.search.objective == "latency" and timing \
        else (lambda r: (r["full"]["size_mb"], r["number"]))
    chosen = min(finalists, key=key)
    info = {"trial": chosen["number"], "settings": chosen["settings"], "phase": "final", "final": True,
            "p50_ms_final_bench": chosen.get("final_p50_ms")}
    with file_lock(ctx.folder / ".best.lock"):
        current = read_best(ctx.folder)
        if not (current and current.get("final") and current.get("trial") == chosen["number"]):
            _publish(ctx, chosen["full"], info)  # not again when another worker of this folder did
    # Selection is over: the eval split is read now, once, for the chosen model and the references.
    ctx.emit("phase", name="test")
    candidate = search_candidate(recipe)
    final, scored = _score_eval_once(ctx, chosen["settings"], [candidate, *recipe.baselines])
    by_name = {s["name"]: s for s in final["stages"][1:]}
    test = {"teacher": _test_row(final["stages"][0]), "chosen": _test_row(by_name[candidate]),
            **{b: _test_row(by_name[b]) for b in recipe.baselines if b in by_name}}
    return {"chosen": chosen, "finalists": finalists, "references": {k: _test_row(v) for k, v in refs.items()},
            "bench": timing, "primary": {k: v for k, v in primary.items()},
            "test": {"split": final["eval"]["data"], "examples": final["eval"]["examples"], "stages": test},
            "environment": (timing or {}).get("environment"),
            "primary_shape": (recipe.eval.primary_shape().model_dump() if recipe.eval.primary_shape() else None),
            "finalized_now": measured or scored}


def _here(ctx: SearchContext, row: dict) -> dict:
    """`row` with its model and teacher on this machine: a finalist a worker elsewhere ran (another --runs) is
    built here, through the stage cache."""
    full = row["full"]
    if Path(full["path"]).exists() and Path(full["teacher_path"]).exists():
        return row
    results = run_pipeline(trial_recipe(ctx.recipe, row["settings"]), ctx.runs_dir, ctx.progress)
    stage = next(s for s in results["stages"] if s["name"] == full["stage"])
    return {**row, "full": {**full, "path": stage["path"], "teacher_path": results["stages"][0]["path"]}}


def _final_bench(ctx: SearchContext, sources: list[str], labels: list[str], spec: BenchSpec) -> tuple[dict, bool]:
    """One interleaved bench of the finalists, the teacher and the baselines; kept, so that running a finished
    search again reports (and chooses) from the same measurement."""
    from compress.evaluation.latency.bench import bench

    path = ctx.folder / f"final-bench-{digest({'sources': sources, 'labels': labels, 'spec': spec.model_dump()})}.json"
    return kept(path, lambda: bench(sources, spec, labels=labels, load_kwargs=load_kwargs(ctx.recipe)))


def _score_eval_once(ctx: SearchContext, settings: dict, targets: list[str]) -> tuple[dict, bool]:
    """The eval-split results of the chosen setting, kept: a re-run of a finished search (e.g. to rebuild its
    report) reports them again instead of reading the eval split a second time."""
    path = ctx.folder / f"eval-{digest({'settings': settings, 'targets': targets})}.json"
    return kept(path, lambda: run_pipeline(trial_recipe(ctx.recipe, settings, split="eval", targets=targets),
                                           ctx.runs_dir, ctx.progress))


def _test_row(stage: dict) -> dict:
    return {k: stage.get(k) for k in ("name", "path", "kind", "backend", "accuracy", "perplexity", "size_mb", "params")}

"""Accuracy-budget search across passes: Optuna trials over a recipe's `search.space`, the fastest (or smallest)
model within the budget, chosen on the validation split and scored once on the eval split.

Each trial is the recipe with the sampled settings, run through `compress.pipeline.runner.run`, so trials share the
stage cache (every trial with the same distilled student reuses it) and a trial killed mid-training resumes
from its checkpoint. During selection the trial recipes score `data.validation` in place of `data.eval`: the
eval (test) split is never read until the chosen model, the teacher and the baselines are scored on it once.

    runs/<recipe>/search/study.db     Optuna's SQLite study: a killed search resumes, two terminals share it
    runs/<recipe>/search/best/        the best model so far that meets the budget, replaced atomically
    runs/<recipe>/search/latency/     per-candidate trial timings (same model, same protocol: timed once)

Fidelity: with `search.fidelity`, every trial first runs cheap (low-fidelity overrides, a subset of the
validation split); only a trial that can still be chosen goes on to full fidelity (see `SearchFidelity`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compress.core.errors import CompressError
from compress.evaluation.latency.bench import BenchSpec
from compress.pipeline.recipe import (
    Recipe,
    ancestors,
    apply_settings,
    dump_recipe,
    parse_recipe,
    recipe_dict,
    search_candidate,
    space_size,
)

log = logging.getLogger(__name__)

SEARCH_DIR = "search"
STUDY_FILE = "study.db"
BEST_DIR = "best"
BEST_FILE = "best.json"
BUDGET = "budget"  # the Optuna constraint: loss minus budget (feasible when <= 0), which TPE samples around
LOCK_RETRY_S = 2.0  # another terminal's trial holds the run folder: wait this long between tries
Event = Callable[..., None]  # on_event(kind, **info): "phase" (name), "trial" (number, state, row)


def search_dir(recipe: Recipe, runs_dir: str | Path = "runs") -> Path:
    """`runs/<recipe>/search/`: the study, `best/` and the timing cache of one recipe's search."""
    return Path(runs_dir) / recipe.name / SEARCH_DIR


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


def _run_pipeline(recipe: Recipe, runs_dir: Path, progress: bool) -> dict:
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


def _primary_row(rows: list[dict], recipe: Recipe, label: str) -> dict | None:
    primary = recipe.eval.primary_shape()
    for row in rows:
        if row["model"] == label and (primary is None or (row["device"], row["batch_size"], row["seq_len"]) ==
                                      (primary.device, primary.batch_size, primary.seq_len)):
            return row
    return None


def load_kwargs(recipe: Recipe) -> dict:
    return {k: v for k, v in {"task": recipe.task, "num_labels": recipe.num_labels}.items() if v}


# --- one search ------------------------------------------------------------------------------------------------


@dataclass
class _Context:
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


def score(ctx: _Context, settings: dict[str, Any], fidelity: str) -> dict:
    """Run one setting at one fidelity on the validation split: quality vs the teacher, latency, size."""
    recipe = ctx.recipe
    start = time.perf_counter()
    candidate = search_candidate(recipe)
    results = _run_pipeline(trial_recipe(recipe, settings, fidelity=fidelity), ctx.runs_dir, ctx.progress)
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


def _time_candidate(ctx: _Context, source: str, label: str) -> dict:
    """The candidate alone under the trial protocol, cached by its (content-keyed) stage path and the spec."""
    from compress.evaluation.latency.bench import bench
    from compress.pipeline.runner import digest

    spec = trial_spec(ctx.recipe)

    def measure() -> dict:
        timing = bench([source], spec, labels=[label], load_kwargs=load_kwargs(ctx.recipe))
        if not timing["results"]:
            raise CompressError(f"the bench measured nothing for '{label}' on {spec.devices}", "check the latency devices")
        row = _primary_row(timing["results"], ctx.recipe, label) or timing["results"][0]
        return {k: v for k, v in row.items() if k != "model"}

    return _kept(ctx.folder / "latency" / f"{digest({'source': source, 'spec': spec.model_dump()})}.json", measure)[0]


def _kept(path: Path, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """`compute()`'s result, kept as JSON at `path` (written atomically); (result, whether it was computed now).
    What the search measures or scores once is kept this way, so a re-run reports the same figures."""
    from compress.core.paths import write_atomic

    if path.exists():
        return json.loads(path.read_text()), False
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(result, indent=2, default=str)))
    return result, True


def _sampled(trial, space: dict[str, list]) -> dict[str, Any]:
    """Settings of one trial; values Optuna cannot store (lists, mappings) are sampled by their index."""
    settings = {}
    for key, values in space.items():
        if all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            settings[key] = trial.suggest_categorical(key, values)
        else:
            settings[key] = values[trial.suggest_categorical(key, list(range(len(values))))]
    return settings


def _choices(space: dict[str, list]) -> dict[str, list]:
    return {k: v if all(x is None or isinstance(x, (bool, int, float, str)) for x in v) else list(range(len(v)))
            for k, v in space.items()}


def _objective(ctx: _Context, study_getter: Callable[[], Any]):
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


def _stop_reason(ctx: _Context, low: dict, study) -> str | None:
    """Why a low-fidelity trial cannot be chosen, or None when it may still win (front rule)."""
    slack = ctx.recipe.search.fidelity.slack
    if low["violation"] > slack:
        what = f"perplexity +{100 * low['loss']:.2f}%" if ctx.causal else f"accuracy drop {100 * low['loss']:.2f} pt"
        return f"{what} at low fidelity is over the budget plus slack"
    best = best_trial(study)
    if best is not None and low["objective"] >= best.user_attrs["full"]["objective"]:
        return f"no better than trial {best.number} ({best.user_attrs['full']['objective']:.4g})"
    return None


def best_trial(study):
    """The finished full-fidelity trial that meets the budget with the lowest objective (None when none does)."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "full" in t.user_attrs and t.user_attrs["full"]["violation"] <= 0]
    return min(done, key=lambda t: (t.user_attrs["full"]["objective"], t.number)) if done else None


# --- study: storage, resume, budgets ---------------------------------------------------------------------------


def study_key(recipe: Recipe) -> str:
    """What a study's trials depend on: the recipe and the space, not the budgets (raise `trials` to go on)."""
    from compress.pipeline.runner import digest

    data = recipe_dict(recipe)
    data["search"] = {k: v for k, v in data["search"].items() if k not in ("trials", "max_hours", "finalists")}
    data.pop("description", None)
    return digest(data)


def open_study(recipe: Recipe, folder: Path):
    """Create or load the SQLite study of `folder`; refuse one made from another recipe or space."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = recipe.search
    if search.sampler == "grid":
        sampler = optuna.samplers.GridSampler(_choices(search.space), seed=search.seed)
    elif search.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=search.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=max(2, min(10, search.trials // 3)))
    pruner = optuna.pruners.SuccessiveHalvingPruner() if search.fidelity and search.fidelity.pruner == "halving" \
        else optuna.pruners.NopPruner()
    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=f"sqlite:///{folder / STUDY_FILE}", study_name=recipe.name,
                                direction="minimize", sampler=sampler, pruner=pruner, load_if_exists=True)
    key = study_key(recipe)
    made_from = study.user_attrs.get("key")
    if made_from is None:
        study.set_user_attr("key", key)
        study.set_user_attr("objective", search.objective)
    elif made_from != key:
        raise CompressError(f"the study in '{folder}' was made from another version of recipe '{recipe.name}' "
                            "(stages or search space changed)", "pass --fresh to start a new search, or another --runs")
    return study


def _finished(study) -> int:
    """Trials that count against the budget: complete, pruned, or failed with an error (not interrupted)."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and "error" in t.user_attrs):
            n += 1
    return n


def _spent_seconds(study) -> float:
    return sum((t.datetime_complete - t.datetime_start).total_seconds() for t in study.get_trials(deepcopy=False)
               if t.datetime_complete is not None and t.datetime_start is not None)


def recover(study) -> list[int]:
    """Re-queue the trials a killed search left: RUNNING ones whose process is gone (kill -9, power loss) are
    marked failed, and those and Ctrl-C'd ones run again first (their finished stages come from the cache)."""
    import psutil
    from optuna.trial import TrialState

    retried = set(study.user_attrs.get("retried", []))
    again = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        if t.number in retried:
            continue
        if t.state == TrialState.RUNNING:
            pid, host = t.user_attrs.get("pid"), t.user_attrs.get("host")
            if host != socket.gethostname() or pid is None or (pid != os.getpid() and psutil.pid_exists(pid)):
                continue  # another terminal's live trial (or another machine's: not ours to judge)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        elif not t.user_attrs.get("interrupted"):
            continue  # failed with an error: counted, not repeated
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        again.append(t.number)
    if again:
        study.set_user_attr("retried", sorted(retried | set(again)))
    return again


# --- best/: always a usable answer -------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _sigint_deferred():
    """Ctrl-C waits until the two renames of a publish are done (main thread only)."""
    main = threading.current_thread() is threading.main_thread()
    if main:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def publish_best(folder: Path, row: dict, info: dict, recipe: Recipe) -> Path:
    """Copy the candidate at `row['path']` to `folder/best/` with `best.json` (settings, validation figures) and
    the trial's recipe, replacing the old one in two renames; a kill at any point leaves a whole `best/`."""
    best = folder / BEST_DIR
    source = Path(row["path"])
    model_folder = source if source.is_dir() else source.parent
    tmp = folder / f".{BEST_DIR}.tmp-{os.getpid()}"
    old = folder / f".{BEST_DIR}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_folder, tmp / "model", ignore=shutil.ignore_patterns("checkpoint*", "optimizer*"))
    model = "model" if source.is_dir() else f"model/{source.name}"
    (tmp / BEST_FILE).write_text(json.dumps({**info, "model": model, "figures": row,
                                             "published": _now()}, indent=2, default=str))
    (tmp / "recipe.yaml").write_text(dump_recipe(trial_recipe(recipe, info["settings"], split="eval")))
    with _sigint_deferred():
        if best.exists():
            os.replace(best, old)
        os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)
    return best


def restore_best(folder: Path) -> None:
    """After a kill between the two renames of a publish, put the previous `best/` back."""
    best = folder / BEST_DIR
    olds = sorted(folder.glob(f".{BEST_DIR}.old-*"))
    if not best.exists() and olds:
        os.replace(olds[-1], best)
    for stale in [*folder.glob(f".{BEST_DIR}.tmp-*"), *folder.glob(f".{BEST_DIR}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def read_best(folder: Path) -> dict | None:
    path = folder / BEST_DIR / BEST_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _update_best(ctx: _Context, study) -> None:
    """After each trial: publish the best trial so far that meets the budget, if `best/` holds another."""
    best = best_trial(study)
    if best is None:
        return
    with _file_lock(ctx.folder / ".best.lock"):  # two terminals may finish trials at once
        current = read_best(ctx.folder)
        if current is not None and current.get("trial") == best.number and not current.get("final"):
            return
        info = {"trial": best.number, "settings": best.user_attrs["settings"], "phase": "trials", "final": False}
        publish_best(ctx.folder, best.user_attrs["full"], info, ctx.recipe)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- the search ----------------------------------------------------------------------------------------------------


def search(recipe: Recipe, *, runs_dir: str | Path = "runs", fresh: bool = False, on_event: Event | None = None,
           progress: bool = False, finalize: bool = True) -> dict:
    """Run (or resume) the search of `recipe` and return its results (what `report.search.write` renders).

    Args:
        recipe: a validated recipe with a `search` block.
        runs_dir: root of the stage cache; the search lives in `runs_dir/<recipe>/search/`.
        fresh: delete this recipe's study and `best/` first (the stage cache is kept).
        on_event: callback `(kind, **info)`: "phase" (name), "trial" (number, state, row).
        progress: let passes show their own progress bars.
        finalize: after the trials, re-time the finalists together, choose, and score the eval split once.
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
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    restore_best(folder)
    emit = on_event or (lambda kind, **info: None)
    ctx = _Context(recipe, runs_dir, folder, emit, progress)
    study = open_study(recipe, folder)
    started = time.perf_counter()
    retried = recover(study)
    emit("phase", name="trials", finished=_finished(study), total=recipe.search.trials, retried=retried)
    _run_trials(ctx, study)
    trial_seconds = time.perf_counter() - started
    results = {"schema": 1, "kind": "search", "recipe": recipe.name, "description": recipe.description,
               "created": _now(), "search": recipe.search.model_dump(mode="json"), "space_size": space_size(recipe.search),
               "candidate": search_candidate(recipe), "budget_metric": "perplexity" if ctx.causal else "accuracy",
               "run_dir": str(folder), "trials": trial_rows(study), "recipe_config": recipe_dict(recipe)}
    results["cost"] = {"this_session_seconds": round(trial_seconds, 1), "trial_seconds": round(_spent_seconds(study), 1)}
    if finalize:
        results.update(_finalize(ctx, study))
        # A re-run of a finished search reuses the kept bench and test scores: the cost is the run that made them.
        if results.pop("finalized_now", False) or "final_seconds" not in study.user_attrs:
            study.set_user_attr("final_seconds", round(time.perf_counter() - started - trial_seconds, 1))
        results["cost"]["final_seconds"] = study.user_attrs["final_seconds"]
    results["cost"]["total_seconds"] = round(results["cost"]["trial_seconds"] + results["cost"].get("final_seconds", 0), 1)
    return results


def _run_trials(ctx: _Context, study) -> None:
    search = ctx.recipe.search
    remaining = search.trials - _finished(study)
    timeout = None
    if search.max_hours is not None:
        timeout = search.max_hours * 3600 - _spent_seconds(study)
    if remaining <= 0 or (timeout is not None and timeout <= 0):
        return
    def after(st, trial) -> None:
        _update_best(ctx, st)
        ctx.emit("trial", number=trial.number, state=trial.state.name.lower(), row=trial_row(trial))
        if _finished(st) >= search.trials:
            st.stop()

    study.optimize(_objective(ctx, lambda: study), n_trials=remaining, timeout=timeout, catch=(CompressError,),
                   callbacks=[after])


def trial_row(t) -> dict:
    """One trial as plain data: settings, state, each fidelity's figures, seconds."""
    attrs = t.user_attrs
    seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
    full = attrs.get("full")
    return {"number": t.number, "state": t.state.name.lower(), "settings": attrs.get("settings", t.params),
            "fidelity": "full" if full else ("low" if "low" in attrs else None), "low": attrs.get("low"),
            "full": full, "stopped": attrs.get("stopped"), "error": attrs.get("error"),
            "retry_of": attrs.get("retry_of"), "seconds": round(seconds, 1) if seconds is not None else None,
            "feasible": bool(full and full["violation"] <= 0)}


def trial_rows(study) -> list[dict]:
    return [trial_row(t) for t in study.get_trials(deepcopy=False)]


def _finalize(ctx: _Context, study) -> dict:
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
    ctx.emit("phase", name="finalists", count=len(finalists))
    refs = {}
    if recipe.baselines:  # the baselines on validation: their models (for the bench) and their validation scores
        ref_results = _run_pipeline(trial_recipe(recipe, {}, targets=list(recipe.baselines)), ctx.runs_dir, ctx.progress)
        refs = {s["name"]: s for s in ref_results["stages"][1:]}
    teacher_path = finalists[0]["full"]["teacher_path"]
    labels = ["teacher", *refs, *(f"trial-{r['number']}" for r in finalists)]
    sources = [teacher_path, *(s["path"] for s in refs.values()), *(r["full"]["path"] for r in finalists)]
    spec = recipe.eval.latency or trial_spec(recipe)
    timing, measured = _final_bench(ctx, sources, labels, spec) if spec is not None else (None, False)
    primary = {label: _primary_row(timing["results"], recipe, label) if timing else None for label in labels}
    for r in finalists:
        r["final_p50_ms"] = (primary[f"trial-{r['number']}"] or {}).get("p50_ms")
    key = (lambda r: (r["final_p50_ms"], r["number"])) if recipe.search.objective == "latency" and timing \
        else (lambda r: (r["full"]["size_mb"], r["number"]))
    chosen = min(finalists, key=key)
    info = {"trial": chosen["number"], "settings": chosen["settings"], "phase": "final", "final": True,
            "p50_ms_final_bench": chosen.get("final_p50_ms")}
    with _file_lock(ctx.folder / ".best.lock"):
        publish_best(ctx.folder, chosen["full"], info, recipe)
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


def _final_bench(ctx: _Context, sources: list[str], labels: list[str], spec: BenchSpec) -> tuple[dict, bool]:
    """One interleaved bench of the finalists, the teacher and the baselines; kept, so that running a finished
    search again reports (and chooses) from the same measurement."""
    from compress.evaluation.latency.bench import bench
    from compress.pipeline.runner import digest

    path = ctx.folder / f"final-bench-{digest({'sources': sources, 'labels': labels, 'spec': spec.model_dump()})}.json"
    return _kept(path, lambda: bench(sources, spec, labels=labels, load_kwargs=load_kwargs(ctx.recipe)))


def _score_eval_once(ctx: _Context, settings: dict, targets: list[str]) -> tuple[dict, bool]:
    """The eval-split results of the chosen setting, kept: a re-run of a finished search (e.g. to rebuild its
    report) reports them again instead of reading the eval split a second time."""
    from compress.pipeline.runner import digest

    path = ctx.folder / f"eval-{digest({'settings': settings, 'targets': targets})}.json"
    return _kept(path, lambda: _run_pipeline(trial_recipe(ctx.recipe, settings, split="eval", targets=targets),
                                             ctx.runs_dir, ctx.progress))


def _test_row(stage: dict) -> dict:
    return {k: stage.get(k) for k in ("name", "path", "kind", "backend", "accuracy", "perplexity", "size_mb", "params")}

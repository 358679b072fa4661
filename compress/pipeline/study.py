"""Keep a search's state on disk: the Optuna study (open, resume, read its trials) and the `best/` it publishes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from compress.core.errors import CompressError
from compress.pipeline.recipe import Recipe, dump_recipe, recipe_dict
from compress.pipeline.results import digest

SEARCH_DIR = "search"
STUDY_FILE = "study.db"
BEST_DIR = "best"
BEST_FILE = "best.json"


def search_dir(recipe: Recipe, runs_dir: str | Path = "runs") -> Path:
    """`runs/<recipe>/search/`: the study, `best/` and the timing cache of one recipe's search."""
    return Path(runs_dir) / recipe.name / SEARCH_DIR


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def kept(path: Path, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """`compute()`'s result, kept as JSON at `path` (written atomically); (result, whether it was computed now).
    What the search measures or scores once is kept this way, so a re-run reports the same figures."""
    from compress.core.paths import write_atomic

    if path.exists():
        return json.loads(path.read_text()), False
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(result, indent=2, default=str)))
    return result, True


# --- study: storage, resume, budgets ---------------------------------------------------------------------------


def study_key(recipe: Recipe) -> str:
    """What a study's trials depend on: the recipe and the space, not the budgets (raise `trials` to go on)."""
    data = recipe_dict(recipe)
    data["search"] = {k: v for k, v in data["search"].items() if k not in ("trials", "max_hours", "finalists")}
    data.pop("description", None)
    return digest(data)


def _choices(space: dict[str, list]) -> dict[str, list]:
    return {k: v if all(x is None or isinstance(x, (bool, int, float, str)) for x in v) else list(range(len(v)))
            for k, v in space.items()}


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


def finished(study) -> int:
    """Trials that count against the budget: complete, pruned, or failed with an error (not interrupted)."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and "error" in t.user_attrs):
            n += 1
    return n


def spent_seconds(study) -> float:
    return sum((t.datetime_complete - t.datetime_start).total_seconds() for t in study.get_trials(deepcopy=False)
               if t.datetime_complete is not None and t.datetime_start is not None)


def resume_study(study) -> list[int]:
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


def best_trial(study):
    """The finished full-fidelity trial that meets the budget with the lowest objective (None when none does)."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "full" in t.user_attrs and t.user_attrs["full"]["violation"] <= 0]
    return min(done, key=lambda t: (t.user_attrs["full"]["objective"], t.number)) if done else None


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


# --- best/: always a usable answer -------------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path: Path):
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


def publish_best(folder: Path, row: dict, info: dict, trial: Recipe) -> Path:
    """Copy the candidate at `row['path']` to `folder/best/` with `best.json` (settings, validation figures) and
    `trial`, the recipe that makes it, replacing the old one in two renames; a kill at any point leaves a whole
    `best/`."""
    best = folder / BEST_DIR
    source = Path(row["path"])
    model_folder = source if source.is_dir() else source.parent
    tmp = folder / f".{BEST_DIR}.tmp-{os.getpid()}"
    old = folder / f".{BEST_DIR}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_folder, tmp / "model", ignore=shutil.ignore_patterns("checkpoint*", "optimizer*"))
    model = "model" if source.is_dir() else f"model/{source.name}"
    (tmp / BEST_FILE).write_text(json.dumps({**info, "model": model, "figures": row,
                                             "published": now()}, indent=2, default=str))
    (tmp / "recipe.yaml").write_text(dump_recipe(trial))
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

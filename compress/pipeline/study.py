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


def open_study(recipe: Recipe, folder: Path, storage: str | None = None, study_name: str | None = None):
    """Create or load the study of `recipe`: in `folder`'s SQLite file, or in `storage` (any Optuna RDB URL, which
    several workers, on one machine or many, can share); refuse one made from another recipe or space. A storage
    that cannot be used (read-only, corrupt, unreachable, not a URL) is a `CompressError` and is left unchanged."""
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
    url = storage_url(folder, storage)
    db = check_storage(url, default=storage is None)
    if storage is None:
        folder.mkdir(parents=True, exist_ok=True)
    # Workers starting together on one SQLite file would race to create its tables.
    lock = file_lock(db.parent / f".{db.name}.lock") if db is not None else contextlib.nullcontext()
    try:
        with lock:
            study = optuna.create_study(storage=_rdb(url), study_name=study_name or recipe.name,
                                        direction="minimize", sampler=sampler, pruner=pruner, load_if_exists=True)
            key = study_key(recipe)
            made_from = study.user_attrs.get("key")
            if made_from is None:
                study.set_user_attr("key", key)
                study.set_user_attr("objective", search.objective)
    except (ImportError, ValueError, optuna.exceptions.StorageInternalError, *db_errors()) as e:
        raise storage_error(url, e, default=storage is None) from None
    if made_from is not None and made_from != key:
        where = f"'{folder}'" if storage is None else redacted(url)
        raise CompressError(f"the study in {where} was made from another version of recipe '{recipe.name}' "
                            "(stages or search space changed)",
                            "pass --fresh to start a new search, or another --runs (or --storage / --study-name)")
    return study


def drop_study(recipe: Recipe, storage: str, study_name: str | None = None) -> None:
    """--fresh with --storage: delete this recipe's study there (the default SQLite file goes with `folder`)."""
    import optuna

    check_storage(storage, default=False)
    try:
        optuna.delete_study(study_name=study_name or recipe.name, storage=_rdb(storage))
    except KeyError:
        pass  # no such study yet
    except (ImportError, ValueError, optuna.exceptions.StorageInternalError, *db_errors()) as e:
        raise storage_error(storage, e, default=False) from None


# --- storage: where the study lives, and what can go wrong there -------------------------------------------------

HEARTBEAT_S = 30  # a running trial writes a heartbeat this often ...
GRACE_S = 120  # ... and one silent this long (its worker was killed, its machine lost) is failed and run again


def storage_url(folder: Path, storage: str | None = None) -> str:
    return storage or f"sqlite:///{folder / STUDY_FILE}"


def redacted(url: str) -> str:
    """`url` for messages, its password hidden."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url


def db_errors() -> tuple[type[Exception], ...]:
    from sqlalchemy.exc import SQLAlchemyError

    return (SQLAlchemyError,)


def _rdb(url: str):
    """Optuna's RDB storage of `url`, with heartbeats so a crashed worker's trial does not stay RUNNING forever."""
    import warnings

    import optuna
    from sqlalchemy.engine import make_url

    engine_kwargs = {}
    if make_url(url).get_backend_name() in ("postgresql", "mysql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}  # an unreachable server fails in seconds, not minutes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat is "experimental"
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S, heartbeat_stale_trial_callback=_requeue_stale)


def _sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL (None for another database, or an in-memory one)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    db = u.database
    if db.startswith("file:"):  # sqlite:///file:path?mode=ro&uri=true
        db = db[len("file:"):].split("?", 1)[0]
    return Path(db)


_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_storage(url: str, default: bool) -> Path | None:
    """Refuse, before anything is written, a storage URL that is not one, or an SQLite study file that cannot be
    used: not a database, read-only, or in a folder that cannot be written (SQLite writes its journal beside it).
    Returns the SQLite file, if it is one."""
    from sqlalchemy.exc import ArgumentError

    try:
        db = _sqlite_file(url)
    except (ArgumentError, ValueError) as e:
        raise storage_error(url, e, default) from None
    if db is None:
        return None
    fix = "pass --fresh to start a new study there, or move it away" if default else \
        "move it away, or pass another --storage"
    if db.is_dir():
        raise CompressError(f"the study database '{db}' is a folder", fix)
    if db.exists():
        with open(db, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
        if head and head != _SQLITE_MAGIC:
            raise CompressError(f"the study database '{db}' is not an SQLite database (corrupt, or another file)", fix)
        if not os.access(db, os.W_OK):
            raise CompressError(f"the study database '{db}' is read-only",
                                "make it writable (chmod u+w), or pass another --runs or --storage")
    folder = db.parent
    while not folder.exists() and folder != folder.parent and default:  # the default folder is created
        folder = folder.parent
    if not folder.is_dir():
        raise CompressError(f"the folder of the study database '{db}' does not exist", "create it, or fix --storage")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CompressError(f"the folder '{folder}' of the study database is read-only (SQLite writes its journal there)",
                            "make it writable, or pass another --runs or --storage")
    return db


def storage_error(url: str, e: BaseException, default: bool) -> CompressError:
    """One line for a storage that failed: what it is (read-only, corrupt, no driver, unreachable) and the fix."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = redacted(url)
    chain, cause = [], e
    while cause is not None and len(chain) < 5:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(getattr(c, "orig", None) or c) for c in chain).lower()
    if "readonly database" in text or "read-only" in text or "read only" in text:
        return CompressError(f"the study storage {shown} is read-only",
                             "make it writable, or pass another --runs or --storage")
    if "not a database" in text or "malformed" in text:
        fix = "pass --fresh to start a new study there, or move it away" if default else \
            "move it away, or pass another --storage"
        return CompressError(f"the study storage {shown} is not a readable database (corrupt, or another file)", fix)
    if isinstance(e, (ArgumentError, NoSuchModuleError, ValueError)):
        return CompressError(f"--storage '{shown}' is not a database URL Optuna can use",
                             "give an SQLAlchemy URL such as sqlite:///path/study.db or postgresql://user@host/db")
    if isinstance(e, ImportError):
        return CompressError(f"no database driver for the study storage {shown}",
                             "install it (e.g. pip install psycopg2-binary for postgresql://, pymysql for mysql+pymysql://)")
    orig = getattr(e, "orig", None) or e
    reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    return CompressError(f"cannot use the study storage {shown}: {reason}",
                         "check the URL, that the database server is up and reachable, and the credentials; "
                         "then re-run the same command (the study resumes)")


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
    from optuna.trial import TrialState

    retried = set(study.user_attrs.get("retried", []))
    again = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        if t.number in retried:
            continue
        if t.state == TrialState.RUNNING:
            if not _dead_here(t):
                continue  # another terminal's live trial (or another machine's: its heartbeat tells)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        elif not t.user_attrs.get("interrupted"):
            continue  # failed with an error: counted, not repeated
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        again.append(t.number)
    if again:
        study.set_user_attr("retried", sorted(retried | set(again)))
    return again


def _dead_here(t) -> bool:
    """A RUNNING trial of a process of this machine that is gone (not this one: its trials are over)."""
    import psutil

    pid, host = t.user_attrs.get("pid"), t.user_attrs.get("host")
    return host == socket.gethostname() and pid is not None and (pid == os.getpid() or not psutil.pid_exists(pid))


def running_elsewhere(study) -> list[int]:
    """Trials other workers are running now (this machine's dead ones excluded: `resume_study` re-runs those)."""
    from optuna.trial import TrialState

    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if not _dead_here(t)]


def _requeue_stale(study, trial) -> None:
    """A trial whose heartbeat stopped (its worker killed, its machine lost) was failed: run it again first."""
    retried = set(study.user_attrs.get("retried", []))
    if trial.number in retried or not trial.params:
        return
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
    study.set_user_attr("retried", sorted(retried | {trial.number}))


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

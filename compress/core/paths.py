"""The one output-path guard and the run-folder lock: nothing compress writes may touch what it reads.

Every command and the pipeline call `guard_output` before any work, so a careless `-o` fails in one line
(exit 2) with the input untouched. Outputs are then built beside their destination and renamed into place
(`compress.models.artifacts.publish_dir`), so a failure never leaves a half-written folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from compress.core.errors import CompressError

# Files that mark a folder as one compress wrote: only such a folder (or an empty one) is replaced as a whole.
OUTPUT_MARKERS = ("compress_model.json", "model.onnx", "results.json", "quantization.json", "compress_pass.json",
                  "metrics.json", "export_report.json", "report.md")
LOCK_SUFFIX = ".lock"


def cache_root() -> Path:
    """What compress keeps across runs (converted models, teacher logits): $COMPRESS_CACHE, else ~/.cache/compress."""
    return Path(os.environ.get("COMPRESS_CACHE") or Path.home() / ".cache" / "compress").expanduser()


def write_atomic(path: Path, write: Callable[[Path], None], suffix: str = "") -> None:
    """`write(tmp)` beside `path`, then one rename: readers see the old file or the whole new one, never a part.
    `suffix` ends the temporary name for writers that add their own (np.save appends .npy)."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{suffix}")
    write(tmp)
    os.replace(tmp, path)


def guard_output(output: str | Path, inputs: Iterable[str | Path | None] = (), *, kind: str = "dir",
                 replace: bool = True, what: str = "--output") -> Path:
    """Refuse (CompressError) an output that would damage an input or cannot be written; return it resolved.

    Args:
        output: the path about to be written.
        inputs: everything the command reads (model sources, data, recipe); entries that are not local paths
            (`tiny:bert`, hub ids, None) are ignored.
        kind: "dir" when the output is a folder, "file" when it is one file.
        replace: the output folder is replaced as a whole, so an existing folder of other files is refused.
        what: the option name used in messages.
    """
    out = Path(output).expanduser().resolve()
    for source in inputs:
        if source is None:
            continue
        try:
            path = Path(str(source)).expanduser()
            if not path.exists():
                continue
            path = path.resolve()
        except (OSError, RuntimeError, ValueError):
            continue  # not a local path (a hub id, `tiny:bert`, `builtin:digits`)
        if out == path:
            raise CompressError(f"{what} '{output}' is the input '{source}'", f"pass a new path for {what}")
        if path in out.parents and path.is_dir():
            raise CompressError(f"{what} '{output}' is inside the input '{source}'", f"pass a path outside it for {what}")
        if out in path.parents:
            raise CompressError(f"{what} '{output}' contains the input '{source}' (it would be replaced)",
                                f"pass a new folder for {what}")
    if out.exists():
        if kind == "dir" and not out.is_dir():
            raise CompressError(f"{what} '{output}' is an existing file, not a folder", "pass a folder path")
        if kind == "file" and out.is_dir():
            raise CompressError(f"{what} '{output}' is an existing folder, not a file", "pass a file path")
        if kind == "dir" and replace and any(out.iterdir()) and not any((out / m).exists() for m in OUTPUT_MARKERS):
            raise CompressError(f"{what} '{output}' is a folder of other files (compress replaces its output folder "
                                "as a whole)", "pass a new or empty folder")
    _check_writable(out.parent, output, what)
    if kind == "dir" and out.is_dir():
        _check_writable(out, output, what)  # its old contents are removed when the new output replaces it
    return out


def _check_writable(folder: Path, output, what: str) -> None:
    """The nearest existing ancestor of `folder` must be a folder this process can create files in."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CompressError(f"{what} '{output}': '{existing}' is a file, not a folder", "pass a path under a folder")
    try:  # a real probe: os.access says yes to root on read-only mounts and to some network filesystems
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".compress-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CompressError(f"{what} '{output}': cannot write in '{existing}' ({e.strerror or type(e).__name__})",
                            "pass a folder you can write to") from None


# --- one run per folder -------------------------------------------------------------------------------------


class RunLock:
    """`runs/.<recipe>.lock` holding the owner's pid: a second `compress run` of the folder is refused while
    the owner lives; a lock left by a dead (killed, crashed) process is taken over.

    Args:
        folder: the run folder being protected (the lock file is its sibling, so `--fresh` keeps it).
    """

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.folder = folder
        self.path = folder.with_name(f".{folder.name}{LOCK_SUFFIX}")
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "started": _start_time(os.getpid())}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(owner):
                    raise CompressError(f"run folder '{self.folder}' is in use by another compress run "
                                        f"(pid {owner['pid']})", "wait for it to finish, or pass another --runs") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise CompressError(f"cannot take the lock '{self.path}'", "remove it if no compress run is using the folder")

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
        except (OSError, ValueError):
            return None  # half-written or unreadable: treated as stale


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _alive(owner: dict) -> bool:
    """The lock's process still runs (the same process: a reused pid has another start time)."""
    import psutil

    pid = owner["pid"]
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
    except (psutil.Error, OSError):
        return False
    started = owner.get("started")
    return started is None or abs(proc.create_time() - started) < 1.0

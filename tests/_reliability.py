"""Helpers of the reliability tests: checksums of inputs, the one-line exit-2 contract, the real CLI as a process."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def checksum(path: Path) -> str:
    """sha256 over every file under `path` (names and bytes), or of the file itself."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def assert_one_line_error(result, *needles: str) -> str:
    """Exit code 2, exactly one non-empty output line, starting with 'error:', no traceback; returns the line."""
    output = result.output if hasattr(result, "output") else result.stdout + result.stderr
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, output
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and "Traceback" not in output, output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def compress(*args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m compress ARGS` as a real process (stdout and stderr captured: no terminal)."""
    return subprocess.run([sys.executable, "-m", "compress", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout, **kwargs)


def popen(*args, cwd=None) -> subprocess.Popen:
    # Ctrl-C reaches the child even when the test session itself ignores SIGINT (a job started with `&` from a
    # script does, and the child would inherit it: Python only installs its handler where SIGINT is not ignored).
    return subprocess.Popen([sys.executable, "-m", "compress", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

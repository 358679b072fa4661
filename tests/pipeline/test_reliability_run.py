"""Issue 12, class 5: a stage killed in the middle of training resumes from its last checkpoint, and a second
`compress run` of the same run folder is refused while the first holds it; both with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from _reliability import assert_one_line_error, compress, popen

from compress.core.errors import CompressError
from compress.core.paths import RunLock

RECIPE = """\
# A plain MLP fine-tuned on digits for many small steps, checkpointed every 10: long enough to be killed mid-way.
name: resume
model: builder:mlp
data: {source: builtin:digits, train: train, eval: test}
stages:
  - {name: teacher, pass: {type: finetune, max_steps: 1500, batch_size: 8, lr: 0.001, checkpoint_every: 10}}
eval: {threads: 1, latency: null}
"""


def _wait_for(predicate, timeout: float, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it was killed: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no checkpoint appeared in time")


def test_killed_stage_resumes_and_a_second_run_is_refused(tmp_path):
    import torch

    recipe = tmp_path / "resume.yaml"
    recipe.write_text(RECIPE)
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    args = ["run", recipe, "--runs", runs, "-o", reports]

    # a first run, stopped as soon as its stage has written a training checkpoint
    first = popen(*args)
    checkpoint = _wait_for(lambda: next(runs.glob("resume/.teacher-*.work/work/finetune/checkpoint.pt"), None),
                           240, first)
    os.kill(first.pid, signal.SIGSTOP)  # alive, holding the lock
    try:
        lock = json.loads((runs / ".resume.lock").read_text())
        assert lock["pid"] == first.pid
        # a second run of the same folder is refused while the first holds it
        second = compress(*args)
        assert_one_line_error(second, "is in use by another compress run", f"pid {first.pid}")
    finally:
        os.kill(first.pid, signal.SIGKILL)  # a crash: no cleanup, the lock file stays behind
        first.communicate()
    assert (runs / ".resume.lock").exists()
    step = torch.load(checkpoint, map_location="cpu", weights_only=False)["step"]
    assert 0 < step < 1500

    # the next run takes the stale lock over and continues the stage from the checkpoint, not from step 0
    third = compress(*args, timeout=600)
    assert third.returncode == 0, third.stdout + third.stderr
    record = json.loads(next(runs.glob("resume/teacher-*/record.json")).read_text())
    assert record["metrics"]["resumed_from_step"] == step and record["metrics"]["steps"] == 1500
    assert not (runs / ".resume.lock").exists()  # released
    assert not list((runs / "resume").glob(".*.work")) and not list((runs / "resume").glob(".*.tmp-*"))
    assert (reports / "resume" / "results.json").is_file()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    folder = tmp_path / "runs" / "r"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = RunLock(folder)
    lock.path.parent.mkdir(parents=True)
    lock.path.write_text(json.dumps({"pid": dead.pid, "started": 0.0}))
    with RunLock(folder) as held:
        assert json.loads(held.path.read_text())["pid"] == os.getpid()
        with pytest.raises(CompressError, match="in use by another compress run"):
            RunLock(folder).acquire()  # this process holds it and is alive
    assert not lock.path.exists()
    lock.path.write_text("{half a json")  # unreadable: stale too
    with RunLock(folder):
        pass
    # a live pid that belongs to another process than the one that wrote the lock (pid reused) is stale
    lock.path.write_text(json.dumps({"pid": os.getpid(), "started": 1.0}))
    with RunLock(folder):
        pass

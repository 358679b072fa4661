"""The machine under a bench: busy policy (load average, steal), the host record, and per-model peak memory."""

from __future__ import annotations

import pytest

from compress.core.errors import CompressError
from compress.evaluation.latency import busy, memory
from compress.evaluation.latency.bench import BenchSpec, bench

FAST = dict(batch_sizes=[1], seq_lens=[1], iters=2, warmup=0, threads=1, isolate=False)


def _readers(monkeypatch, load: float, steal_per_read: float = 0.0):
    """Fake /proc readers: a fixed load average, and CPU counters that advance 100 jiffies per read of which
    `steal_per_read` are stolen."""
    ticks = {"n": 0}

    def cpu_times():
        ticks["n"] += 1
        return steal_per_read * ticks["n"], 100.0 * ticks["n"]

    monkeypatch.setattr(busy, "loadavg", lambda: load)
    monkeypatch.setattr(busy, "cpu_times", cpu_times)


def test_real_readers_read_this_machine():
    load, cpu = busy.loadavg(), busy.cpu_times()
    assert load is None or load >= 0.0
    if cpu is not None:  # Linux
        steal, total = cpu
        assert 0.0 <= steal <= total and total > 0


def test_refuse_stops_before_any_model_loads(monkeypatch):
    # setup: load 3.0 with 1 bench thread (limit 1.5); a model that would fail to load if we got that far
    _readers(monkeypatch, load=3.0)
    # execute / assert: the busy error, in one line, naming the load and the fix
    with pytest.raises(CompressError, match=r"load average 3\.00 > 1\.5") as err:
        bench(["no/such/model"], BenchSpec(**FAST, busy="refuse"))
    assert "\n" not in str(err.value) and "busy: mark" in str(err.value)


def test_refuse_stops_when_steal_appears_in_a_round(monkeypatch):
    # setup: an idle machine whose hypervisor takes 10% of the CPU time
    _readers(monkeypatch, load=0.1, steal_per_read=10.0)
    # execute / assert
    with pytest.raises(CompressError, match=r"CPU steal 10\.0% > 5% in round 1 on cpu"):
        bench(["tiny:mlp"], BenchSpec(**FAST, rounds=2, busy="refuse"))


def test_mark_flags_the_result_and_records_every_round(monkeypatch):
    # setup
    _readers(monkeypatch, load=2.0)
    # execute
    result = bench(["tiny:mlp"], BenchSpec(**FAST, rounds=2))  # busy: mark is the default
    # assert: timed anyway, flagged with the reason, readings before/after the bench and each round
    env = result["environment"]
    assert result["busy"] is True and env["busy"] is True and env["busy_policy"] == "mark"
    assert result["busy_reason"].startswith("load average 2.00 > 1.5 (1 bench thread + 0.5) before the bench")
    assert env["load_before"] == 2.0 and env["load_after"] == 2.0 and env["steal_fraction"] == 0.0
    rounds = env["per_round"]
    assert [r["round"] for r in rounds] == [0, 1] and all(r["device"] == "cpu" for r in rounds)
    assert all(r["load_before"] == r["load_after"] == 2.0 and r["steal_fraction"] == 0.0 for r in rounds)
    assert "in round 2 on cpu" in rounds[1]["busy_reason"]
    assert result["results"][0]["p50_ms"] > 0


def test_an_idle_machine_is_not_busy_and_ignore_only_records(monkeypatch):
    # setup / execute
    _readers(monkeypatch, load=1.4)  # below 1 thread + 0.5
    idle = bench(["tiny:mlp"], BenchSpec(**FAST, rounds=1))
    _readers(monkeypatch, load=9.0, steal_per_read=50.0)
    ignored = bench(["tiny:mlp"], BenchSpec(**FAST, rounds=1, busy="ignore"))
    # assert
    assert idle["busy"] is False and idle["busy_reason"] is None
    assert ignored["busy"] is False and ignored["environment"]["load_before"] == 9.0
    assert ignored["environment"]["per_round"][0]["steal_fraction"] == 0.5  # still recorded
    with pytest.raises(ValueError, match="busy"):
        BenchSpec(busy="sometimes")


def test_host_record_names_cpu_flags_cores_threads_kernel_and_wait_policy():
    # execute
    env = bench(["tiny:mlp"], BenchSpec(**FAST, rounds=1))["environment"]
    # assert
    for key in ("cpu", "cpu_flags", "physical_cores", "logical_cores", "threads", "kernel", "load_before",
                "load_after", "versions"):
        assert key in env, key
    assert env["threads"] == 1 and env["kernel"]
    assert list(env["wait_policy"]) == ["pytorch"]  # per backend, as its workers ran (here: this process)
    assert env["wait_policy"]["pytorch"].startswith("native: OMP_WAIT_POLICY=")
    assert env["wait_policy"]["pytorch"].endswith("(in-process: the parent's policy)")
    assert all(f.startswith(("avx", "fma", "amx")) for f in env["cpu_flags"])


def test_reset_peak_forgets_an_earlier_peak():
    import numpy as np

    if memory.status_mb("VmHWM") is None:
        pytest.skip("no /proc/self/status")
    # setup: a 200 MB peak, freed again
    block = np.ones(200 * 2**20 // 8)
    del block
    before = memory.status_mb("VmHWM")
    # execute
    if not memory.reset_peak():
        pytest.skip("this kernel does not allow resetting VmHWM")
    after = memory.status_mb("VmHWM")
    # assert: the high-water mark now starts from what is resident
    assert after < before - 100 and after == pytest.approx(memory.status_mb("VmRSS"), abs=20)


def test_a_bigger_model_reads_more_memory_in_its_own_worker(tmp_path):
    import numpy as np

    from compress.models.artifacts import TorchModel
    from compress.models.builders import BUILDERS

    # setup: tiny:mlp (64-64-10, ~5k parameters) against an MLP of ~19M parameters (75 MB), saved to disk
    kwargs = {"hidden": 3072, "depth": 3, "num_classes": 10}
    big = TorchModel(BUILDERS["mlp"](**kwargs).eval(), "image-classification", builder="mlp",
                     builder_kwargs=kwargs, source="big-mlp")
    big.save(tmp_path / "big")
    del big
    ballast = np.ones(600 * 2**20 // 8)  # this process peaks 600 MB higher (as after training), then frees it
    del ballast
    spec = BenchSpec(batch_sizes=[1], seq_lens=[1], iters=2, rounds=1, warmup=0, threads=1)  # isolated workers
    # execute
    small_row, big_row = bench(["tiny:mlp", str(tmp_path / "big")], spec)["results"]
    # assert: each worker reads its own peak, not this process's (getrusage in the worker read ours), and the
    # 75 MB of weights show
    for row in (small_row, big_row):
        assert row["rss_method"] in ("clear_refs", "fresh_interpreter")
        assert 0 < row["load_rss_mb"] <= row["peak_rss_mb"]
    assert small_row["peak_rss_mb"] < memory.status_mb("VmHWM") - 400
    assert big_row["load_rss_mb"] > small_row["load_rss_mb"] + 60
    assert big_row["peak_rss_mb"] > small_row["peak_rss_mb"] + 60


def test_in_process_memory_falls_back_to_a_fresh_interpreter(monkeypatch):
    # setup: this process cannot reset its high-water mark (its peak would be the whole test session's)
    monkeypatch.setattr(memory, "reset_peak", lambda: False)
    # execute
    row = bench(["tiny:mlp"], BenchSpec(**FAST, rounds=1))["results"][0]
    # assert: measured in a freshly started interpreter instead
    assert row["rss_method"] == "fresh_interpreter" and 0 < row["load_rss_mb"] <= row["peak_rss_mb"]

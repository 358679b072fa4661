"""The latency protocol: percentiles, environment record, in-process and isolated workers, node placement."""

from __future__ import annotations

import pytest

from compress.evaluation.latency.bench import BenchSpec, bench
from compress.evaluation.latency.timing import percentiles, time_runs


def test_percentiles_and_throughput():
    stats = percentiles([float(i) for i in range(1, 101)], batch_size=4)
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01) and stats["throughput_per_s"] == pytest.approx(4000 / 50.5, rel=1e-3)


def test_time_runs_counts_warmup_and_iters():
    calls = []
    times = time_runs(lambda: calls.append(1), warmup=3, iters=5)
    assert len(calls) == 8 and len(times) == 5 and all(t >= 0 for t in times)


def test_bench_torch_and_onnx_in_process(tmp_path, tiny_bert):
    from compress.export.onnx import export_onnx

    export_onnx(tiny_bert, tmp_path / "onnx")
    spec = BenchSpec(batch_sizes=[1, 2], seq_lens=[16], iters=6, rounds=2, warmup=1, isolate=False,
                     devices=["cpu", "cuda"])
    result = bench(["tiny:bert", str(tmp_path / "onnx")], spec)
    rows = result["results"]
    cpu_rows = [r for r in rows if r["device"] == "cpu"]
    assert len(cpu_rows) == 4 and {r["backend"] for r in rows} == {"pytorch", "onnxruntime"}
    onnx_row = next(r for r in rows if r["backend"] == "onnxruntime")
    assert onnx_row["providers"][0] == "CPUExecutionProvider"
    assert sum(onnx_row["nodes_per_provider"].values()) > 10  # every graph node was placed somewhere
    assert all(r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["runs"] == 6 for r in rows)
    env = result["environment"]
    assert env["threads"] >= 1 and "torch" in env["versions"] and "onnxruntime" in env["versions"]


def test_bench_isolated_worker_process(tiny_cnn, tmp_path):
    tiny_cnn.save(tmp_path / "cnn")
    result = bench([str(tmp_path / "cnn")], BenchSpec(batch_sizes=[1], seq_lens=[8], iters=4, rounds=1, warmup=1))
    assert result["results"][0]["runs"] == 4 and result["results"][0]["backend"] == "pytorch"

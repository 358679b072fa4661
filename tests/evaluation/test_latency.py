"""The latency protocol: percentiles, environment record, in-process and isolated workers, node placement,
intervals over rounds and per-model memory in the rows."""

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
    for r in rows:  # each figure with its value per round and its interval over rounds
        assert r["rounds"] == 2 and len(r["p50_ms_rounds"]) == 2 and r["ci_coverage"] == 0.5
        assert r["p50_ms_ci95"] == [min(r["p50_ms_rounds"]), max(r["p50_ms_rounds"])]
        assert r["rss_method"] == "in_process" and 0 < r["load_rss_mb"] <= r["peak_rss_mb"]
    torch_row = next(r for r in rows if r["backend"] == "pytorch")
    assert torch_row["attn_implementation"] == "eager"  # tiny:bert is built eager (builders); HF folders load sdpa
    assert "attn_implementation" not in onnx_row
    env = result["environment"]
    assert env["threads"] >= 1 and "torch" in env["versions"] and "onnxruntime" in env["versions"]
    assert set(env["wait_policy"]) == {"pytorch", "onnxruntime"} and len(env["per_round"]) == 2 * 1  # cpu only


def test_bench_isolated_worker_process(tiny_cnn, tmp_path):
    tiny_cnn.save(tmp_path / "cnn")
    result = bench([str(tmp_path / "cnn")], BenchSpec(batch_sizes=[1], seq_lens=[8], iters=4, rounds=1, warmup=1))
    row = result["results"][0]
    assert row["runs"] == 4 and row["backend"] == "pytorch"
    assert row["rounds"] == 1 and row["p50_ms_ci95"] is None  # one round: no interval
    assert row["rss_method"] in ("clear_refs", "fresh_interpreter") and 0 < row["load_rss_mb"] <= row["peak_rss_mb"]


def test_five_interleaved_rounds_by_default():
    assert BenchSpec().rounds == 5 and BenchSpec().busy == "mark"


def test_hf_classifier_folders_load_with_the_default_attention(tmp_path, tiny_bert):
    from compress.models.load import load_model

    # setup: a classifier as users have it, an HF folder
    tiny_bert.module.save_pretrained(tmp_path / "hf")
    tiny_bert.tokenizer.save_pretrained(tmp_path / "hf")
    # execute
    model = load_model(str(tmp_path / "hf"))
    # assert: transformers' default (sdpa), not forced eager, so the teacher is timed as users run it
    assert model.task == "text-classification" and model.module.config._attn_implementation == "sdpa"

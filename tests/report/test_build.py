"""Report building: speedups, accuracy drops, Pareto front, goal verdicts, best stage and the closing note."""

from __future__ import annotations

import pytest

from compress.report.build import build, pareto_front


def test_pareto_front():
    # (latency, accuracy): the slow-but-worse point is dominated
    assert pareto_front([(10, 0.9), (5, 0.8), (12, 0.85), (5, 0.8)]) == [True, True, False, True]


def test_derived_figures(results):
    built = build(results)
    by = {s["name"]: s for s in built["stages"]}
    assert by["int8"]["speedup"] == pytest.approx(36 / 7, abs=1e-3)
    assert by["int8"]["accuracy_drop"] == pytest.approx(0.01)
    assert by["int8"]["size_ratio"] == pytest.approx(90 / 16, abs=1e-3)
    assert by["int8"]["latency"][0]["speedup_vs_teacher"] == pytest.approx(36 / 7, abs=1e-3)
    assert results["stages"][3].get("speedup") is None  # the input is not modified


def test_verdicts_and_pareto(results):
    by = {s["name"]: s for s in build(results)["stages"]}
    assert by["teacher"]["verdicts"] == {}  # the reference gets no verdict
    assert by["int8"]["verdicts"] == {"accuracy": True, "speedup": True} and by["int8"]["meets_goals"]
    assert by["too-lossy"]["verdicts"] == {"accuracy": False, "speedup": True}
    assert by["distill-3l"]["verdicts"]["speedup"] is False
    assert by["distill-3l"]["pareto"] is False  # baseline-int8 is faster and more accurate
    assert by["int8"]["pareto"] and by["too-lossy"]["pareto"] and by["baseline-int8"]["pareto"]
    assert by["teacher"]["pareto"] is False  # as accurate as baseline-int8, and slower


def test_best_stage_and_note(results):
    summary = build(results)["summary"]
    # too-lossy is faster but misses the accuracy goal; the baseline is never the best
    assert summary["best"] == "int8"
    vs = {c["vs"]: c for c in summary["comparisons"]}
    assert set(vs) == {"teacher", "baseline-int8"}
    assert vs["baseline-int8"]["speedup"] == pytest.approx(16 / 7, abs=1e-3)
    assert vs["baseline-int8"]["accuracy_drop"] == pytest.approx(0.01)
    assert "5.14x faster than the teacher" in summary["note"] and "2.29x faster than `baseline-int8`" in summary["note"]
    assert "-1.00 pt" in summary["note"]


def test_without_goals_best_is_fastest_on_front(results):
    results["goals"] = None
    built = build(results)
    assert built["summary"]["best"] == "too-lossy"
    assert all(s["verdicts"] == {} for s in built["stages"])


def test_build_is_idempotent(results):
    once = build(results)
    assert build(once) == once


def test_speedup_interval_and_a_goal_inside_it_are_marked():
    from compress.report.build import build
    from compress.report.render import markdown

    # setup: a teacher and a stage timed in the same 6 rounds; the stage is ~1.5x faster, noisily
    teacher_rounds = [3.0, 3.1, 2.9, 3.0, 3.2, 3.0]
    stage_rounds = [2.0, 1.8, 2.3, 2.0, 1.9, 2.2]

    def stage(name, rounds, **kw):
        row = {"device": "cpu", "batch_size": 1, "seq_len": 16, "backend": "onnxruntime",
               "p50_ms": sorted(rounds)[3], "p90_ms": max(rounds), "p50_ms_rounds": rounds}
        return {"name": name, "accuracy": 0.9, "size_mb": 1.0, "params": 10, "latency": [row], **kw}

    results = {"recipe": "r", "stages": [stage("teacher", teacher_rounds), stage("s", stage_rounds, pass_="x")],
               "goals": {"min_speedup": 1.5}, "primary": {"device": "cpu", "batch_size": 1, "seq_len": 16},
               "environment": {"busy": True, "busy_reason": "load average 3.2 > 2.5", "load_before": 3.2,
                               "load_after": 3.0}}
    # execute
    built = build(results)
    s = built["stages"][1]
    # assert: the interval holds the speedup, crosses the 1.5x goal, and the report says so (and that it was busy)
    lo, hi = s["speedup_ci95"]
    assert lo < s["speedup"] < hi and lo < 1.5 <= hi and s["uncertain"] == ["speedup"]
    text = markdown(built)
    assert "(CI crosses goal)" in text and f"[{lo:.2f}-{hi:.2f}]" in text and "busy machine" in text

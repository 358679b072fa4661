"""Decoder goals: the perplexity budget holds on every eval domain, the zero-shot budget on every task, and the
speedup may be measured against a peer runtime; the frontier lists the best speed at each quality level."""

from __future__ import annotations

import pytest

from compress.report import causal, render


def stage(name, ppl, domains, tasks, decode_tps, **extra):
    ms = 1000 / decode_tps
    return {"name": name, "task": "text-generation", "perplexity": domains["rte"], "size_mb": 100.0,
            "metrics": {"domains": {n: {"perplexity": p} for n, p in domains.items()},
                        "tasks": {n: {"accuracy": a} for n, a in tasks.items()}},
            "latency": [{"device": "cpu", "batch_size": 1, "seq_len": 128, "p50_ms": ms, "backend": "onnxruntime",
                         "decode_tokens_per_s": decode_tps}], **extra}


@pytest.fixture
def results() -> dict:
    teacher_tasks = {"sst2": 0.60, "rte": 0.56}
    return {
        "recipe": "goals", "primary": {"device": "cpu", "batch_size": 1, "seq_len": 128},
        "eval": {"domains": {"rte": {}, "sst2": {}}}, "environment": {"threads": 2},
        "goals": {"max_perplexity_increase": 0.10, "max_task_drop": 0.02, "min_speedup": 1.5,
                  "speedup_vs": "llama.cpp-q8_0"},
        "stages": [
            stage("teacher", 40, {"rte": 40, "sst2": 200}, teacher_tasks, 30),
            # in budget on the first domain, 20% over on the second: the perplexity goal is missed
            stage("narrow", 42, {"rte": 42, "sst2": 240}, teacher_tasks, 160),
            # in budget everywhere, a task 3 points down
            stage("task-drop", 44, {"rte": 44, "sst2": 210}, {"sst2": 0.57, "rte": 0.56}, 150),
            stage("good", 43, {"rte": 43, "sst2": 215}, {"sst2": 0.59, "rte": 0.57}, 145),
            stage("slow", 41, {"rte": 41, "sst2": 205}, teacher_tasks, 100),
            stage("llama.cpp-q8_0", 40, {"rte": 40, "sst2": 200}, {}, 92, is_peer=True),
        ]}


def test_perplexity_goal_holds_on_every_domain_and_task_goal_on_every_task(results):
    built = {s["name"]: s for s in causal.build(results)["stages"]}
    assert built["narrow"]["ppl_increase"] == pytest.approx(0.05)
    assert built["narrow"]["ppl_increase_worst"] == pytest.approx(0.20)
    assert built["narrow"]["verdicts"]["perplexity"] is False
    assert built["task-drop"]["task_drops"]["sst2"] == pytest.approx(0.03)
    assert built["task-drop"]["verdicts"] == {"perplexity": True, "tasks": False, "speedup": True}
    assert built["good"]["verdicts"] == {"perplexity": True, "tasks": True, "speedup": True}
    assert built["good"]["speedup"] == pytest.approx(145 / 92, abs=1e-3)  # against the peer, not the teacher
    assert built["slow"]["verdicts"]["speedup"] is False
    assert built["llama.cpp-q8_0"]["verdicts"]["tasks"] is None  # a peer is not scored on tasks


def test_best_stage_meets_every_goal_and_the_frontier_is_fastest_first(results):
    built = causal.build(results)
    assert built["summary"]["best"] == "good"
    rows = causal.frontier_rows(built)
    # each faster stage is worse on its worst domain: all four are on the front (tasks do not rank it)
    assert [r[0] for r in rows] == ["narrow", "task-drop", "good", "slow"]
    assert rows[0][1] == "+20.0" and rows[2][3] == "sst2 +1.0"
    built["stages"][2]["decode_tokens_per_s"] = 140  # now slower than `good` and worse: off the front
    assert [r[0] for r in causal.frontier_rows(built)] == ["narrow", "good", "slow"]
    md = render.markdown(built)
    assert "## Frontier" in md and "on every eval domain" in md and "2.0 points below" in md


def test_speedup_vs_may_name_a_peer_and_task_budget_needs_tasks():
    from compress.pipeline.recipe import Recipe, plan

    base = {"name": "r", "model": "tiny:llama", "task": "text-generation", "data": {"source": "x", "eval": "validation"},
            "stages": [{"name": "int8", "pass": {"type": "quantize_ort", "mode": "weight_only", "bits": 8}}]}
    peer = {"peers": [{"name": "q8", "runtime": "llamacpp", "precision": "Q8_0"}]}
    plan(Recipe(**base, eval=peer, goals={"min_speedup": 1.5, "speedup_vs": "q8"}))
    with pytest.raises(ValueError, match="not a stage or a peer"):
        plan(Recipe(**base, eval=peer, goals={"min_speedup": 1.5, "speedup_vs": "q4"}))
    with pytest.raises(ValueError, match="eval.tasks"):
        plan(Recipe(**base, goals={"max_task_drop": 0.02}))


def test_task_drop_gets_a_paired_interval_and_a_goal_inside_it_is_marked(results):
    # the teacher right on 60 of 100 examples; `good` answers the same but misses 3 of those: drop 3 points
    teacher_correct = [1] * 60 + [0] * 40
    stage_correct = [1] * 57 + [0] * 43
    for st, correct in ((results["stages"][0], teacher_correct), (results["stages"][3], stage_correct)):
        st["metrics"]["tasks"] = {"sst2": {"accuracy": sum(correct) / 100, "correct": correct}}
    built = {s["name"]: s for s in causal.build(results)["stages"]}
    lo, hi = built["good"]["task_drops_ci95"]["sst2"]
    # paired: the drop can only be 0..3 misses per resample, far tighter than two independent Wilson intervals
    assert 0 <= lo < 0.02 < hi <= 0.07
    assert built["good"]["verdicts"]["tasks"] is False and "tasks" in built["good"]["uncertain"]
    from compress.report.intervals import verdict

    assert "tasks MISS (CI crosses goal)" in verdict(built["good"])


def test_paired_difference_ci_is_exact_for_identical_answers():
    from compress.core.stats import paired_difference_ci

    assert paired_difference_ci([1, 0, 1, 1], [1, 0, 1, 1]) == (0.0, 0.0, 0.0)
    drop, lo, hi = paired_difference_ci([1] * 50 + [0] * 50, [0] * 50 + [1] * 50)
    assert drop == 0.0 and lo < -0.1 and hi > 0.1  # same accuracy, disagreeing everywhere: wide
    with pytest.raises(ValueError, match="same examples"):
        paired_difference_ci([1, 0], [1])

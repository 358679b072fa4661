"""A synthetic `results.json` (schema 1) for report tests: teacher, a baseline and three compressed stages."""

from __future__ import annotations

import pytest


def stage(name, acc, p50, size, **extra):
    latency = [{"device": "cpu", "backend": extra.pop("backend", "pytorch"), "batch_size": 1, "seq_len": 128,
                "p50_ms": p50, "p90_ms": p50 * 1.2}]
    return {"name": name, "pass": extra.pop("pass_", None), "from": "teacher", "accuracy": acc, "size_mb": size,
            "zipped_mb": size * 0.9, "params": int(size * 250_000), "nonzero_fraction": 1.0, "latency": latency,
            "agreement": {"argmax_agreement": 0.95, "mean_kl": 0.01, "max_abs_diff": 0.5}, "pass_metrics": {},
            "backend": latency[0]["backend"], **extra}


@pytest.fixture
def results() -> dict:
    return {
        "schema": 1, "recipe": "synthetic", "description": "A made-up run.",
        "environment": {"cpu": "Test CPU", "threads": 2, "versions": {"torch": "x"}},
        "primary": {"device": "cpu", "batch_size": 1, "seq_len": 128},
        "goals": {"max_accuracy_drop": 0.015, "min_speedup": 3.0, "speedup_vs": "teacher"},
        "eval": {"data": {"source": "sst2", "split": "test"}, "examples": 100},
        "stages": [
            stage("teacher", 0.88, 36.0, 90.0, is_teacher=True),
            stage("baseline-int8", 0.88, 16.0, 23.0, is_baseline=True, backend="onnxruntime", pass_="quantize_ort"),
            stage("distill-3l", 0.875, 18.0, 60.0, pass_="distill"),
            stage("int8", 0.87, 7.0, 16.0, backend="onnxruntime", pass_="quantize_ort"),
            stage("too-lossy", 0.80, 5.0, 10.0, backend="onnxruntime", pass_="quantize_ort",
                  pass_metrics={"sparsity_per_layer": {"layer.0": 0.5, "layer.1": 0.4, "layer.2": 0.6}}),
        ],
    }


@pytest.fixture
def search_results() -> dict:
    """A finished `compress search` (accuracy budget): three trials, trial 1 chosen, one baseline."""
    def trial(number, acc, p50, feasible, full=True, loss=None):
        figures = {"accuracy": acc, "teacher_accuracy": 0.90, "loss": 0.90 - acc if loss is None else loss,
                   "p50_ms": p50, "size_mb": 10.0 + number, "path": f"runs/s/int8-{number}/model.onnx"}
        return {"number": number, "state": "complete" if full else "pruned", "settings": {"prune.sparsity": 0.1 * number},
                "fidelity": "full" if full else "low", "low": None if full else figures, "full": figures if full else None,
                "stopped": None, "error": None, "retry_of": None, "seconds": 10.0, "feasible": feasible}

    return {
        "schema": 1, "kind": "search", "recipe": "synthetic-search", "description": "Search over `prune.sparsity`.",
        "created": "2026-12-01T00:00:00+00:00", "candidate": "int8", "budget_metric": "accuracy", "run_dir": "runs/s",
        "space_size": 3, "environment": {"cpu": "Test CPU", "threads": 2, "versions": {"torch": "x"}},
        "search": {"space": {"prune.sparsity": [0.0, 0.1, 0.2]}, "objective": "latency", "max_accuracy_drop": 0.01,
                   "max_perplexity_increase": None, "sampler": "grid"},
        "primary_shape": {"device": "cpu", "batch_size": 1, "seq_len": 128},
        "trials": [trial(0, 0.895, 4.0, True), trial(1, 0.893, 3.0, True), trial(2, 0.90, 2.5, False, full=False, loss=-0.0)],
        "chosen": None, "finalists": [], "references": {"baseline-int8": {"accuracy": 0.90}},
        "primary": {"teacher": {"p50_ms": 20.0}, "baseline-int8": {"p50_ms": 6.0}, "trial-1": {"p50_ms": 2.9}},
        "test": {"split": {"split": "test"}, "examples": 100,
                 "stages": {"teacher": {"accuracy": 0.88, "backend": "pytorch", "size_mb": 90.0},
                            "baseline-int8": {"accuracy": 0.88, "backend": "onnxruntime", "size_mb": 23.0},
                            "chosen": {"accuracy": 0.87, "backend": "onnxruntime", "size_mb": 11.0}}},
        "cost": {"trial_seconds": 30.0, "final_seconds": 6.0, "total_seconds": 36.0},
    }


@pytest.fixture
def search_results_chosen(search_results) -> dict:
    chosen = {**search_results["trials"][1], "final_p50_ms": 2.9}
    return {**search_results, "chosen": chosen, "finalists": [chosen]}

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

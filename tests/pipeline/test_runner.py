"""Pipeline: stages run in order, are cached by input and config, resume after an interruption, and are
scored against the teacher with the foundation's evaluation."""

from __future__ import annotations

import json

import _fake_passes as fake
import pytest

from compress.pipeline import runner as pipeline
from compress.pipeline.recipe import parse_recipe


def recipe(factors=(2.0, 0.5), **extra):
    """tiny:cnn -> scale -> scale -> ONNX, scored on 64 digits, no latency (kept fast)."""
    stages = [{"name": f"scale{i}", "pass": {"type": "test_scale", "factor": f}} for i, f in enumerate(factors)]
    stages.append({"name": "onnx", "pass": {"type": "export_onnx", "check_examples": 8}})
    data = {"name": "pipe", "model": "tiny:cnn", "stages": stages,
            "data": {"source": "builtin:digits", "validation": {"split": "validation", "limit": 16},
                     "eval": {"split": "test", "limit": 64}},
            "eval": {"latency": None, "batch_size": 32}}
    data.update(extra)
    return parse_recipe(data)


def figures(results: dict) -> list:
    """Everything but timing: names, accuracy, agreement, size."""
    return [(s["name"], s["accuracy"], round(s["agreement"]["max_abs_diff"], 5), s["params"], s["size_mb"])
            for s in results["stages"]]


@pytest.fixture(autouse=True)
def reset_fakes():
    fake.CALLS.clear()
    fake.CRASH["at"] = None
    yield
    fake.CRASH["at"] = None


def test_run_scores_every_stage_against_the_teacher(tmp_path):
    # execute
    results = pipeline.run(recipe(), runs_dir=tmp_path)
    # assert: teacher (the base model) first, then every stage; scaling keeps argmax, so agreement is total
    assert [s["name"] for s in results["stages"]] == ["teacher", "scale0", "scale1", "onnx"]
    assert results["schema"] == 1 and results["teacher"] == "teacher"
    for s in results["stages"]:
        assert s["accuracy"] == results["stages"][0]["accuracy"]
        assert s["agreement"]["argmax_agreement"] == 1.0
        assert s["params"] > 0 and s["size_mb"] > 0
    assert results["stages"][1]["agreement"]["max_abs_diff"] > 0  # logits doubled
    assert results["stages"][3]["backend"] == "onnxruntime" and results["stages"][3]["kind"] == "onnx"
    assert results["stages"][1]["pass_metrics"]["factor"] == 2.0
    assert [p["name"] for p in results["pipeline"]] == ["scale0", "scale1", "onnx"]
    # every stage folder is complete: done.json and record.json
    for name in ("scale0", "scale1", "onnx"):
        folder = next(tmp_path.glob(f"pipe/{name}-*"))
        assert (folder / "done.json").exists() and json.loads((folder / "record.json").read_text())["pass"]


def test_rerun_reuses_every_stage(tmp_path):
    first = pipeline.run(recipe(), runs_dir=tmp_path)
    calls = len(fake.CALLS)
    second = pipeline.run(recipe(), runs_dir=tmp_path)
    assert len(fake.CALLS) == calls  # nothing recomputed
    assert figures(second) == figures(first)
    assert all(p["cached"] for p in second["pipeline"])


def test_changed_pass_recomputes_only_from_there(tmp_path):
    pipeline.run(recipe((2.0, 0.5)), runs_dir=tmp_path)
    fake.CALLS.clear()
    results = pipeline.run(recipe((2.0, 0.25)), runs_dir=tmp_path)
    assert [c.split("-")[0] for c in fake.CALLS] == ["scale1"]  # scale0 reused, scale1 recomputed
    cached = {p["name"]: p["cached"] for p in results["pipeline"]}
    assert cached == {"scale0": True, "scale1": False, "onnx": False}  # downstream of the change recomputed


def test_interrupted_run_resumes_and_gives_the_same_figures(tmp_path):
    # setup: a Ctrl-C inside the second stage
    fake.CRASH["at"] = 0.5
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(recipe(), runs_dir=tmp_path / "a")
    assert len(list((tmp_path / "a" / "pipe").glob("scale0-*/done.json"))) == 1
    assert not list((tmp_path / "a" / "pipe").glob("scale1-*"))  # no half-written stage folder
    # execute: resume
    fake.CRASH["at"] = None
    fake.CALLS.clear()
    resumed = pipeline.run(recipe(), runs_dir=tmp_path / "a")
    # assert: the finished stage was not recomputed; the figures equal an uninterrupted run's
    assert [c.split("-")[0] for c in fake.CALLS] == ["scale1"]
    assert not list((tmp_path / "a" / "pipe").glob(".*tmp*"))
    fresh = pipeline.run(recipe(), runs_dir=tmp_path / "b")
    assert figures(resumed) == figures(fresh)


def test_teacher_stage_is_the_reference(tmp_path):
    # a stage named `teacher` is the reference; agreement is measured against it, not the base model
    data = recipe().model_dump(by_alias=True)
    data["stages"][0]["name"] = "teacher"
    data["stages"][1]["from"] = "teacher"
    results = pipeline.run(parse_recipe(data), runs_dir=tmp_path)
    names = [s["name"] for s in results["stages"]]
    assert names == ["teacher", "scale1", "onnx"]
    assert results["stages"][0]["pass"] == "test_scale"
    assert results["stages"][0]["agreement"]["max_abs_diff"] == 0.0
    assert results["stages"][1]["agreement"]["max_abs_diff"] > 0


def test_missing_data_file_fails_before_running(tmp_path):
    data = recipe().model_dump(by_alias=True)
    data["data"]["source"] = "./no/such/folder"
    from compress.core.errors import CompressError

    with pytest.raises(CompressError, match="data.validation"):
        pipeline.check_data(parse_recipe(data))

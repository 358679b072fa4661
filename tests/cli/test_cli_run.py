"""`compress run` / `compress report` / `compress passes` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from compress.report.schema import load_results

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"


def test_tiny_recipe_end_to_end(cli, tmp_path):
    # execute: the real CLI, real passes (prune, export), real bench (one process per stage)
    result = cli(["run", TINY, "--runs", tmp_path / "runs", "--output", tmp_path / "reports"])
    # assert
    assert result.exit_code == 0, result.output
    folder = tmp_path / "reports" / "tiny"
    for name in ("results.json", "report.md", "report.html", "accuracy_vs_latency.png", "size.png"):
        assert (folder / name).is_file(), name
    results = load_results(folder)
    assert [s["name"] for s in results["stages"]] == ["teacher", "prune50", "onnx"]
    teacher = results["stages"][0]
    assert set(teacher) >= {"name", "accuracy", "size_mb", "params", "latency"}
    assert {"cpu", "threads", "versions"} <= set(results["environment"])
    row = teacher["latency"][0]
    assert {"device", "backend", "batch_size", "seq_len", "p50_ms", "p90_ms"} <= set(row)
    assert row["backend"] == "pytorch" and results["stages"][2]["latency"][0]["backend"] == "onnxruntime"
    pruned = results["stages"][1]
    assert 0.45 < 1 - pruned["nonzero_fraction"] < 0.55  # half the weights are zero
    assert results["summary"]["best"] in ("prune50", "onnx")
    md = (folder / "report.md").read_text()
    assert "| stage |" in md and "![Accuracy vs latency](accuracy_vs_latency.png)" in md
    assert "data:image/png;base64," in (folder / "report.html").read_text()

    # rebuild from results.json alone, and compare two runs
    (folder / "report.md").unlink()
    assert cli(["report", folder]).exit_code == 0
    assert (folder / "report.md").is_file()
    other = tmp_path / "reports" / "copy"
    other.mkdir()
    (other / "results.json").write_text((folder / "results.json").read_text())
    out = tmp_path / "compare.md"
    result = cli(["report", folder, other, "--output", out])
    assert result.exit_code == 0, result.output
    assert out.read_text().count("| tiny |") == 6


def test_report_of_a_folder_without_results_exits_2(cli, tmp_path):
    result = cli(["report", tmp_path])
    assert result.exit_code == 2
    assert "results.json" in result.output


def test_report_rejects_another_schema(cli, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"schema": 99, "recipe": "x", "environment": {}, "stages": []}))
    result = cli(["report", tmp_path])
    assert result.exit_code == 2 and "schema" in result.output


def test_missing_recipe_file_exits_2(cli, tmp_path):
    result = cli(["run", tmp_path / "nope.yaml"])
    assert result.exit_code == 2 and "not found" in result.output


def test_invalid_yaml_exits_2(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nstages: [\n")
    result = cli(["run", path, "--dry-run"])
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_passes_lists_options(cli):
    result = cli(["passes", "export_onnx"])
    assert result.exit_code == 0
    assert "opset" in result.output and "torch -> onnx" in result.output


def test_dry_run_marks_cached_stages(cli, tmp_path):
    data = yaml.safe_load(TINY.read_text())
    data["eval"]["latency"] = None
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli(["run", path, "--runs", tmp_path / "runs", "-o", tmp_path / "rep"]).exit_code == 0
    result = cli(["run", path, "--dry-run", "--runs", tmp_path / "runs"])
    assert result.exit_code == 0
    assert result.output.count("; cached") == 2 and "to run" not in result.output

"""The foundation commands through the real CLI, and the one-line, exit-2 contract for bad input."""

from __future__ import annotations

import json

import pytest


def test_help_lists_commands(cli):
    result = cli(["--help"])
    assert result.exit_code == 0
    for command in ("export", "eval", "bench"):
        assert command in result.output


def test_export_eval_bench(tmp_path, cli):
    out = tmp_path / "onnx"
    result = cli(["export", "tiny:cnn", "-o", out, "--data", "builtin:digits", "--split", "test", "--ort-format"])
    assert result.exit_code == 0, result.output
    assert "max |Δlogits|" in result.output and (out / "model.onnx").exists() and (out / "model.ort").exists()

    metrics_path = tmp_path / "m.json"
    result = cli(["eval", out, "--data", "builtin:digits", "--split", "test", "--reference", "tiny:cnn",
                  "--json", metrics_path])
    assert result.exit_code == 0, result.output
    metrics = json.loads(metrics_path.read_text())
    assert metrics["reference"]["argmax_agreement"] == 1.0 and 0 <= metrics["accuracy"] <= 1

    bench_path = tmp_path / "b.json"
    result = cli(["bench", "tiny:cnn", out, "-b", "1", "--iters", "4", "--rounds", "1", "--warmup", "1",
                  "--no-isolate", "--json", bench_path])
    assert result.exit_code == 0, result.output
    assert "p50" in result.output and len(json.loads(bench_path.read_text())["results"]) == 2


@pytest.mark.parametrize("args, message", [
    (["export", "missing.pt", "-o", "x"], "not found"),
    (["export", "{tmp}/model.xyz", "-o", "x"], "unknown model kind"),
    (["export", "tiny:cnn", "-o", "{tmp}/o", "--exporter", "magic"], "unknown exporter"),
    (["eval", "tiny:bert", "--data", "{tmp}/d.jsonl", "--text-field", "sentence"], "no field 'sentence'"),
    (["eval", "tiny:bert"], "no evaluation data"),
    (["bench", "tiny:cnn", "--device", "tpu"], "unknown device"),
    (["eval", "tiny:bert", "--data", "{tmp}/d.jsonl", "--task", "translation"], "unknown task"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, cli, args, message):
    (tmp_path / "model.xyz").write_text("?")
    (tmp_path / "d.jsonl").write_text('{"text": "hi", "label": 0}\n')
    result = cli([a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


def test_bad_option_value_exit_2(cli):
    result = cli(["bench", "tiny:cnn", "--batch-size", "0"])
    assert result.exit_code == 2


def test_python_dash_m_and_console_script():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "compress", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "export" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "compress", "export", "nope.onnx", "-o", "x"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not found" in bad.stderr

"""`compress quantize` through the real CLI: outputs, the --torch path, and one-line errors with exit code 2."""

from __future__ import annotations

import json


def test_quantize_dynamic_writes_folder(cli, tmp_path):
    result = cli(["quantize", "tiny:bert", "-o", tmp_path / "q", "--exclude", "*classifier*", "--json", tmp_path / "m.json"])
    assert result.exit_code == 0, result.output
    for name in ("model.onnx", "quantization.json", "config.json", "tokenizer.json", "compress_model.json"):
        assert (tmp_path / "q" / name).exists()
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["quantized_matmuls"] > 0 and metrics["excluded_nodes"] == 1
    assert "quantized MatMuls" in result.output


def test_quantize_max_drop_shows_sensitivity(cli, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n"
                            for i, t in enumerate(["bad plot", "good movie", "awful", "great", "dull", "fine"])))
    result = cli(["quantize", "tiny:bert", "-o", tmp_path / "q", "--max-drop", "0.1", "--eval-data", data])
    assert result.exit_code == 0, result.output
    assert "sensitivity" in result.output and "budget search" in result.output


def test_quantize_torch(cli, tmp_path):
    result = cli(["quantize", "tiny:bert", "-o", tmp_path / "q", "--torch"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "q" / "model.safetensors").exists() and "Linear layers quantized" in result.output


def _one_line_error(result, text):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], result.output


def test_static_without_calibration_is_one_line_exit_2(cli, tmp_path):
    _one_line_error(cli(["quantize", "tiny:bert", "-o", tmp_path / "q", "--mode", "static"]), "calibration")


def test_not_an_onnx_model_is_one_line_exit_2(cli, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00junk")
    _one_line_error(cli(["quantize", bad, "-o", tmp_path / "q"]), "not an ONNX model")


def test_exclusion_matching_nothing_is_one_line_exit_2(cli, tmp_path):
    _one_line_error(cli(["quantize", "tiny:bert", "-o", tmp_path / "q", "--exclude", "*nope*"]), "matches no node")


def test_bad_mode_is_one_line_exit_2(cli, tmp_path):
    _one_line_error(cli(["quantize", "tiny:bert", "-o", tmp_path / "q", "--mode", "int4"]), "--mode")

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


# --- issue 26: help examples, decoder wording, one name per concept, `--json -` ----------------------------------

OWNED_ELSEWHERE = ("generate", "search")


def _commands() -> list[str]:
    import typer

    from compress.cli.app import app

    return sorted(name for name in typer.main.get_command(app).commands if name not in OWNED_ELSEWHERE)


def _help(cli, command: str) -> str:
    result = cli([command, "--help"])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())  # the boxes wrap long help over lines


@pytest.mark.parametrize("command", _commands())
def test_every_command_help_has_an_example(cli, command):
    text = _help(cli, command)
    assert f"Example: compress {command} " in text


def test_help_speaks_of_decoders_too(cli):
    assert "text-generation" in _help(cli, "eval")  # --task
    quantize = _help(cli, "quantize")
    assert "relative perplexity increase for causal LMs" in quantize  # --max-drop
    assert "text for causal LMs" in quantize  # --eval-data


def test_block_size_means_only_the_quantization_block(cli):
    assert "--block-size" in _help(cli, "quantize") and "quantization block" in _help(cli, "quantize")
    for command in ("eval", "distill"):
        text = _help(cli, command)
        assert "--window" in text and "--block-size" not in text  # the old name is hidden
    for command in ("prune", "factorize"):  # held-out data is capped like everywhere else
        assert "--eval-limit" in _help(cli, command)


def _json_stdout(result) -> dict:
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stdout holds the JSON alone
    assert result.stderr.strip()  # the tables went to stderr
    return data


def test_json_dash_writes_stdout_in_every_command(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a file named "-" would land here
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(["good", "bad"] * 4)))
    metrics = _json_stdout(cli(["eval", "tiny:bert", "--data", data, "--json", "-"]))
    assert metrics["examples"] == 8 and "accuracy" in metrics
    bench = _json_stdout(cli(["bench", "tiny:cnn", "-b", "1", "-s", "8", "--iters", "2", "--rounds", "1", "--warmup",
                              "1", "--no-isolate", "--json", "-"]))
    assert len(bench["results"]) == 1 and "environment" in bench
    quantized = _json_stdout(cli(["quantize", "tiny:bert", "-o", tmp_path / "q", "--json", "-"]))
    assert quantized["settings"]["mode"] == "dynamic" and (tmp_path / "q" / "model.onnx").exists()
    assert not (tmp_path / "-").exists()


def test_json_dash_on_a_causal_lm(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    txt = tmp_path / "a.txt"
    txt.write_text("The sea was calm this morning.\n\nA café by the harbour opened at nine.\n")
    metrics = _json_stdout(cli(["eval", "tiny:llama", "--data", txt, "--window", "16", "--limit", "1",
                                "--new-tokens", "1", "--json", "-"]))
    assert metrics["documents"] == 1 and metrics["window"] == 16
    assert not (tmp_path / "-").exists()

"""`compress prune` / `compress factorize`: per-layer tables, a folder that reloads, one-line errors (exit 2)."""

from __future__ import annotations

import json

import pytest

from compress.models.load import load_model


def test_prune_unstructured_writes_a_reloadable_folder(cli, tmp_path):
    out = tmp_path / "pruned"
    result = cli(["prune", "tiny:bert", "--sparsity", "0.5", "--global", "-o", out])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "magnitude pruning (global, oneshot)" in text and "gain no speed" in text
    record = json.loads((out / "compress_pass.json").read_text())
    assert record["pass"] == "prune_magnitude" and record["config"]["scope"] == "global"
    assert abs(record["metrics"]["sparsity_targeted"] - 0.5) <= 0.01
    assert load_model(out).num_parameters() == record["metrics"]["params_after"]
    assert not (tmp_path / "pruned.tmp").exists()


def test_prune_structured_and_factorize(cli, tmp_path):
    result = cli(["prune", "tiny:bert", "--sparsity", "0.5", "--structured", "neurons", "-o", tmp_path / "s"])
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "s").module.bert.encoder.layer[1].intermediate.dense.out_features == 32
    result = cli(["factorize", tmp_path / "s", "--rank", "8", "--targets", "*.intermediate.dense,*.output.dense",
                  "-o", tmp_path / "f"])
    assert result.exit_code == 0, result.output
    assert "low-rank" in result.output and "no FLOP saving" not in result.output
    reloaded = load_model(tmp_path / "f")
    assert [s["op"] for s in reloaded.surgery] == ["slice_units", "factorize_lowrank"]


def test_factorize_reports_skipped_layers(cli, tmp_path):
    result = cli(["factorize", "tiny:cnn", "--rank-ratio", "1.0", "-o", tmp_path / "f"])
    assert result.exit_code == 0, result.output
    assert "no FLOP saving" in " ".join(result.output.split())


@pytest.mark.parametrize("args", [
    ["prune", "tiny:bert", "--sparsity", "1.0"],
    ["prune", "tiny:bert", "--sparsity", "-0.2"],
    ["prune", "tiny:bert", "--sparsity", "0.5", "--targets", "*.nope"],
    ["prune", "tiny:bert", "--sparsity", "0.5", "--structured", "rows"],
    ["prune", "tiny:bert", "--sparsity", "0.5", "--recover"],
    ["factorize", "tiny:bert", "--rank", "1000"],
    ["factorize", "tiny:bert", "--rank-ratio", "0.5", "--energy", "0.9"],
    ["factorize", "tiny:bert", "--rank-ratio", "2"],
    ["factorize", "tiny:bert", "--energy", "0.9", "--exclude", "nothing.here"],
])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, args):
    result = cli(args + ["-o", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error:")
    assert not (tmp_path / "out").exists()

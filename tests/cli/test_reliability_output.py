"""Issue 12, class 6: output stays readable when piped or logged: no 80-column cut, no figure ending in '…'."""

from __future__ import annotations

import os

from _reliability import compress


def test_bench_table_is_whole_when_piped_from_a_narrow_terminal(tmp_path, cli, monkeypatch):
    # setup: a model with a long path, and `| tee` from a 60-column terminal (stdout is a pipe, stdin a tty)
    out = tmp_path / "a-rather-long-folder-name-for-an-exported-model" / "onnx-of-the-tiny-convolutional-net"
    assert cli(["export", "tiny:cnn", "-o", out]).exit_code == 0
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=0: os.terminal_size((60, 20)))
    # execute
    result = cli(["bench", "tiny:cnn", out, "-b", "1", "-s", "8", "--iters", "2", "--rounds", "1", "--warmup", "0",
                  "--no-isolate"])
    # assert
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    row = next(line for line in result.output.splitlines() if str(out) in line)
    assert "onnxruntime" in row and "cpu" in row  # one row per model, the whole name on it
    assert any("pytorch" in line and "tiny:cnn" in line for line in result.output.splitlines())


def test_narrow_terminal_folds_cells_instead_of_cutting(monkeypatch):
    from rich.table import Table

    from compress.cli.app import _Console

    console = _Console(width=30, force_terminal=True, color_system=None, record=True)
    table = Table("model", "p50 ms")
    table.add_row("runs/some-recipe/stage-with-a-long-name/model", "12.3456")
    console.print(table)
    text = console.export_text()
    assert "…" not in text and "12.3456" in text


def test_passes_listing_is_not_cut_in_a_pipe():
    result = compress("passes", "quantize_torch", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) > 80  # wider than the old 80-column cut

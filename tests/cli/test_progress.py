"""Progress of the long CLI steps: plain, rate-limited lines without a terminal, rich bars in one, and no
third-party chatter (tqdm bars, transformers warnings) in either."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from rich.console import Console

from compress.cli.progress import Progress, progress

TQDM = re.compile(r"\|█|it/s|s/it")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _plain(every: float = 5.0):
    out, clock = StringIO(), FakeClock()
    console = Console(file=out, force_terminal=False, width=200)
    return out, clock, console


def test_plain_lines_are_rate_limited_per_stage_with_the_final_line():
    # setup: a log (no terminal) and a clock the test moves
    out, clock, console = _plain()
    # execute: 100 updates of one stage over 12 s, then a second stage interleaved
    with progress(console, every=5.0, clock=clock) as on_progress:
        for done in range(1, 101):
            clock.now = done * 0.12
            on_progress("sensitivity", done, 100)
            if done in (10, 90):
                on_progress("budget", done // 10, 9)
    lines = out.getvalue().splitlines()
    # assert: the first line, one line per 5 s, the final line; each stage limited on its own clock
    sens = [line for line in lines if line.startswith("sensitivity:")]
    assert sens[0] == "sensitivity: 1/100 (0.0 s)" and sens[-1] == "sensitivity: 100/100 (11.9 s)"
    assert len(sens) == 4  # 0 s, ~5 s, ~10 s, the end
    assert [line for line in lines if line.startswith("budget:")] == ["budget: 1/9 (0.0 s)", "budget: 9/9 (9.6 s)"]


def test_a_stage_without_a_total_prints_a_start_and_an_end_line():
    out, clock, console = _plain()
    with progress(console, clock=clock) as on_progress:
        on_progress("export (fused graph)", 0, None)
        clock.now = 30.0
        on_progress("export (fused graph)", 0, None)  # still running: no line
        clock.now = 42.5
        on_progress("export (fused graph)", 1, 1)
        on_progress("evaluating", 0, None)  # ended by the block
        clock.now = 50.0
    assert out.getvalue().splitlines() == ["export (fused graph): started", "export (fused graph): done (42.5 s)",
                                           "evaluating: started", "evaluating: done (7.5 s)"]


def test_a_failed_block_prints_no_end_lines_and_an_early_failure_nothing():
    # an early failure (a bad input found after a quick step): the error line alone, no progress before it
    out, clock, console = _plain()
    with pytest.raises(RuntimeError), progress(console, clock=clock) as on_progress:
        on_progress("prepare", 0, 1)
        clock.now = 1.0
        on_progress("prepare", 1, 1)
        raise RuntimeError("bad --exclude")
    assert out.getvalue() == ""
    # a late failure: what was said stays, no end lines are made up
    out, clock, console = _plain()
    with pytest.raises(RuntimeError), progress(console, clock=clock) as on_progress:
        on_progress("timing", 0, None)
        clock.now = 6.0
        on_progress("search", 1, 3)
        raise RuntimeError("boom")
    assert out.getvalue().splitlines() == ["timing: started", "search: 1/3 (0.0 s)"]


def test_a_terminal_gets_a_bar():
    out = StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    bar = Progress(console)
    bar("quantize", 3, 10)
    assert bar.bars is not None  # live until every stage is finished
    bar("quantize", 10, 10)
    assert bar.bars is None  # the terminal is given back (a training loop's own bar may follow)
    bar.close()
    text = out.getvalue()
    assert "quantize" in text and "━" in text and "10/10" in text
    assert "quantize: 3/10" not in text  # no plain lines in a terminal


def test_piped_quantize_prints_plain_progress_and_no_third_party_output(cli, tmp_path, capfd):
    # execute: a tiny decoder quantized under CliRunner (not a terminal), as in a CI log
    r = cli(["quantize", "tiny:llama", "-o", tmp_path / "q"])
    captured = capfd.readouterr()  # what escaped the runner: loggers and C++ libraries write to the real streams
    everything = r.output + captured.out + captured.err
    # assert: plain lines per stage with a count and the elapsed time, then the result table
    assert r.exit_code == 0, r.output
    assert re.search(r"^prepare: 0/1 \(\d+\.\d s\)$", r.output, re.M), r.output
    assert re.search(r"^quantize: 1/1 \(\d+\.\d s\)$", r.output, re.M), r.output
    assert "quantized -> " in r.output
    # no tqdm bars, no transformers / ONNX Runtime warnings
    assert not TQDM.search(everything), everything
    assert not re.search(r"(?im)^.*(warning|\[W:onnxruntime).*$", captured.err), captured.err


def test_a_long_quiet_step_shows_its_start_line_without_waiting_for_its_end():
    import time

    out = StringIO()
    with progress(Console(file=out, force_terminal=False), every=0.05) as on_progress:
        on_progress("export (optimum graph)", 0, None)
        time.sleep(0.3)  # the step runs, reporting nothing
        assert out.getvalue() == "export (optimum graph): started\n"
        on_progress("export (optimum graph)", 1, 1)
    assert out.getvalue().splitlines()[-1].startswith("export (optimum graph): done (")

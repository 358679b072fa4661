"""The CLI on a tiny decoder: eval, export, quantize, and one-line errors for bad decoder input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RTE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "rte"


@pytest.mark.skipif(not RTE.exists(), reason="../shared/data is not beside the checkout")
def test_cli_eval_export_quantize(cli, tmp_path):
    out = tmp_path / "onnx"
    r = cli(["export", "tiny:llama", "-o", out, "--data", RTE, "--split", "validation"])
    assert r.exit_code == 0, r.output
    assert "greedy decode of 32 tokens identical on 8/8 prompts" in r.output
    r = cli(["quantize", out, "-o", tmp_path / "q4", "--mode", "int4", "--block-size", "128"])
    assert r.exit_code == 0, r.output
    metrics = tmp_path / "m.json"
    r = cli(["eval", tmp_path / "q4", "--data", RTE, "--split", "validation", "--reference", "tiny:llama",
             "--block-size", "32", "--max-blocks", "4", "--new-tokens", "4", "--json", metrics])
    assert r.exit_code == 0, r.output
    m = json.loads(metrics.read_text())
    assert m["blocks"] == 4 and m["perplexity"] > 1 and 0 <= m["kl"] < 0.01 and m["greedy_prompts"] == 8


@pytest.mark.parametrize("args, message", [
    (["eval", "tiny:llama", "--data", "{txt}", "--reference", "tiny:bert"], "not a causal LM"),
    (["eval", "tiny:llama", "--data", "{empty}"], "no text in"),
    (["bench", "tiny:llama", "-s", "300", "-b", "1", "--no-isolate", "--iters", "1", "--rounds", "1"],
     "longer than the model's context of 256"),
    (["eval", "tiny:llama", "--data", "{txt}", "--block-size", "300"], "longer than the model's context of 256"),
    (["quantize", "tiny:bert", "-o", "{tmp}/q", "--mode", "int4"], "for causal LMs"),
    (["quantize", "tiny:llama", "-o", "{tmp}/q", "--mode", "static"], "not available for causal LMs"),
])
def test_bad_causal_input_is_one_line(cli, tmp_path, args, message):
    txt = tmp_path / "a.txt"
    txt.write_text(("A sentence of real English about the weather and the sea. " * 40 + "\n\n") * 4)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    args = [a.format(txt=txt, empty=empty, tmp=tmp_path) for a in args]
    r = cli(args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len([line for line in r.output.strip().splitlines() if line.startswith("error")]) == 1

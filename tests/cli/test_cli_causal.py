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
             "--window", "32", "--limit", "4", "--new-tokens", "4", "--json", metrics])
    assert r.exit_code == 0, r.output
    m = json.loads(metrics.read_text())
    assert m["documents"] == 4 and m["perplexity"] > 1 and 0 <= m["kl"] < 0.01 and m["greedy_prompts"] == 8
    assert m["window"] == 32 and m["bits_per_byte"] > 0 and m["tokens"] > 0


def test_cli_eval_scores_documents(cli, tmp_path):
    # setup: two short documents, fewer tokens than one window (no longer an error: each is scored on its own)
    txt = tmp_path / "a.txt"
    txt.write_text("The sea was calm this morning.\n\nA café by the harbour opened at nine.\n")
    metrics = tmp_path / "m.json"
    # execute
    r = cli(["eval", "tiny:llama", "--data", txt, "--new-tokens", "2", "--json", metrics])
    # assert: the table shows bits per byte and documents, the JSON keeps every figure
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())  # the narrow test console wraps the title
    assert "│ bits_per_byte │" in flat and "│ documents │ 2 │" in flat and "(2 documents, window 128 tokens)" in flat
    m = json.loads(metrics.read_text())
    assert m["documents"] == 2 and m["window"] == 128 and m["separator_id"] == 0
    assert m["bytes"] == len("The sea was calm this morning.A café by the harbour opened at nine.".encode())
    for key in ("perplexity", "nll", "tokens", "words", "bits_per_byte", "byte_perplexity", "word_perplexity",
                "generations"):
        assert key in m
    # --max-blocks still works (an old name of --limit), and --separator picks the context token
    r = cli(["eval", "tiny:llama", "--data", txt, "--max-blocks", "1", "--separator", "a", "--new-tokens", "1",
             "--json", metrics])
    assert r.exit_code == 0, r.output
    m = json.loads(metrics.read_text())
    assert m["documents"] == 1 and m["separator_id"] != 0


@pytest.mark.parametrize("args, message", [
    (["eval", "tiny:llama", "--data", "{txt}", "--reference", "tiny:bert"], "not a causal LM"),
    (["eval", "tiny:llama", "--data", "{empty}"], "no text in"),
    (["bench", "tiny:llama", "-s", "300", "-b", "1", "--no-isolate", "--iters", "1", "--rounds", "1"],
     "longer than the model's context of 256"),
    (["eval", "tiny:llama", "--data", "{txt}", "--window", "300"], "--window 300 is longer than the model's context of 256"),
    (["eval", "tiny:llama", "--data", "{txt}", "--separator", "<|nope|>"], "not a token of the model's vocabulary"),
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


def test_quantize_defaults_to_8bit_weight_only_for_decoders(cli, tmp_path):
    # execute: no --mode for a causal LM
    r = cli(["quantize", "tiny:llama", "-o", tmp_path / "q", "--json", tmp_path / "m.json"])
    # assert: MatMulNBits at 8 bits (not the dynamic int8 that decoders' activation outliers break), rendered
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "m.json").read_text())["settings"]
    assert settings["mode"] == "weight_only" and settings["bits"] == 8 and "8-bit rtn" in r.output


def test_quantize_prints_a_verdict_and_reuses_the_export(cli, tmp_path, monkeypatch):
    # setup: a private export cache
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    # execute: the same model quantized twice, int4 then 8-bit
    first = cli(["quantize", "tiny:llama", "-o", tmp_path / "q4", "--mode", "int4", "--json", tmp_path / "a.json"])
    second = cli(["quantize", "tiny:llama", "-o", tmp_path / "q8", "--json", tmp_path / "b.json"])
    # assert: one export, reused the second time; a verdict against the unquantized model with real figures
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["export"]["exported"] is True and b["export"]["reused"] is True
    assert a["export"]["folder"] == b["export"]["folder"] and len(list((tmp_path / "cache" / "exports").iterdir())) == 1
    assert "reused" in second.output and "verdict on built-in sample sentences" in second.output
    v4, v8 = a["verdict"], b["verdict"]
    assert v4["perplexity_fp32"] == v8["perplexity_fp32"]  # the same unquantized model and text
    assert 0 <= v8["kl"] < v4["kl"] and v8["greedy_agreement"] >= v4["greedy_agreement"]  # 8 bits are closer
    assert v8["export"]["graph"] == "fused" and v8["export"]["greedy_identical"] == "8/8"


def test_version(cli):
    from compress import __version__

    r = cli(["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"compress {__version__}"

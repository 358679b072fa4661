"""`compress generate` on the tiny decoder and its ONNX export: the text on stdout, the summary on stderr, and
one-line errors (exit 2) for what cannot be generated."""

from __future__ import annotations

import numpy as np
import pytest

PROMPT = "The sea was calm this morning, and"


def test_generate_streams_the_greedy_text(cli, llama):
    from compress.runtime.causal import CausalRunner

    # setup: what greedy decoding gives in the library
    ids = llama.tokenizer(PROMPT)["input_ids"]
    tokens = CausalRunner(llama).greedy(np.asarray([ids]), 8)[0].tolist()
    if 0 in tokens:  # EOS ends the text
        tokens = tokens[:tokens.index(0)]
    # execute
    r = cli(["generate", "tiny:llama", PROMPT, "--max-new-tokens", 8])
    # assert: stdout is the text alone; the summary (tokens, TTFT, decode speed) is on stderr
    assert r.exit_code == 0, r.output
    assert r.stdout == llama.tokenizer.decode(tokens) + "\n"
    assert "TTFT" in r.stderr and "tok/s" in r.stderr and f"prompt {len(ids)} tokens" in r.stderr


def test_generate_runs_an_onnx_folder_like_pytorch(cli, llama_onnx):
    torch_run = cli(["generate", "tiny:llama", PROMPT, "--max-new-tokens", 12])
    onnx_run = cli(["generate", llama_onnx.model.folder, PROMPT, "--max-new-tokens", 12, "--threads", 1])
    assert onnx_run.exit_code == 0, onnx_run.output
    assert onnx_run.stdout == torch_run.stdout and onnx_run.stdout.strip()


def test_generate_samples_with_a_seed(cli):
    args = ["generate", "tiny:llama", PROMPT, "--max-new-tokens", 12, "--temperature", 2.0, "--top-k", 50,
            "--top-p", 0.95]
    first, again, greedy = cli(args + ["--seed", 3]), cli(args + ["--seed", 3]), cli(args[:5])
    assert first.exit_code == 0, first.output
    assert first.stdout == again.stdout and first.stdout != greedy.stdout


def test_help_shows_an_example(cli):
    r = cli(["generate", "--help"])
    assert r.exit_code == 0
    assert 'compress generate smollm2 "What is the capital of France?"' in r.stdout


@pytest.mark.parametrize("args, message", [
    (["tiny:bert", PROMPT], "not a causal language model"),
    (["tiny:llama", "   "], "the prompt is empty"),
    (["tiny:llama", PROMPT + " and" * 300], "no room in the model's context of 256 tokens"),
    (["tiny:llama", PROMPT, "--chat"], "no chat template"),
    (["tiny:llama", PROMPT, "--top-p", 0], "top_p is 0.0"),
])
def test_generate_errors_are_one_line(cli, args, message):
    r = cli(["generate", *args])
    assert r.exit_code == 2, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""

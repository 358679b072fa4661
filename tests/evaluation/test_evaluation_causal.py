"""Decoder scoring (perplexity by hand, greedy agreement) and the decoder bench rows."""

from __future__ import annotations

import numpy as np
import pytest


def test_perplexity_against_hand_computation(llama, blocks):
    import torch

    from compress.data.causal import prompt_ids
    from compress.evaluation.causal import evaluate_causal

    m = evaluate_causal(llama, blocks, reference=llama, prompts=prompt_ids(llama.tokenizer)[:2], max_new_tokens=5)
    with torch.no_grad():
        logits = llama.module(torch.from_numpy(blocks)).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                            torch.from_numpy(blocks[:, 1:]).reshape(-1))
    assert m["tokens"] == blocks.shape[0] * (blocks.shape[1] - 1)
    assert m["perplexity"] == pytest.approx(float(torch.exp(nll)), rel=1e-4)
    assert m["kl"] == pytest.approx(0.0, abs=1e-6) and m["top1_agreement"] == 1.0
    assert m["greedy_prefix"] == 5 and m["greedy_agreement"] == 1.0


def test_common_prefix():
    from compress.evaluation.causal import common_prefix

    a = np.array([[1, 2, 3], [1, 2, 3], [4, 5, 6]])
    b = np.array([[1, 2, 3], [1, 9, 3], [0, 5, 6]])
    assert common_prefix(a, b).tolist() == [3, 1, 0]


def test_bench_rows_for_decoders(llama_onnx):
    from compress.evaluation.latency.bench import BenchSpec, bench

    spec = BenchSpec(batch_sizes=[1, 2], seq_lens=[8], threads=1, rounds=1, iters=1, warmup=0, isolate=False,
                     new_tokens=3, causal_iters_per_round=2, causal_warmup=0)
    rows = bench(["tiny:llama", str(llama_onnx.model.folder)], spec)["results"]
    assert len(rows) == 4
    for r in rows:
        assert r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0 and r["ttft_ms"] > 0
        assert r["peak_rss_mb"] > 10 and r["runs"] == 2 and r["new_tokens"] == 3
        assert r["decode_tokens_per_s"] == pytest.approx(1000 * r["batch_size"] / r["p50_ms"], rel=1e-2)

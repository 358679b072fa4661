"""The one decode loop for PyTorch and ONNX Runtime (KV cache included)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_kv_cache_decode_matches_full_forward(backend, llama, llama_onnx, blocks):
    """Logits computed token by token with the cache equal one full forward pass (the cache is right)."""
    from compress.runtime.causal import CausalRunner

    run = CausalRunner(llama if backend == "torch" else llama_onnx.model)
    ids = blocks[:2, :12]
    full, _ = run.forward(ids)
    logits, past = run.forward(ids[:, :5])
    steps = [logits[:, -1]]
    mask = np.ones((2, 5), np.int64)
    for t in range(5, 12):
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], 1)
        logits, past = run.forward(ids[:, t:t + 1], mask, past)
        steps.append(logits[:, -1])
    np.testing.assert_allclose(np.stack(steps, 1), full[:, 4:], atol=1e-5)


def test_left_padding_does_not_change_greedy(llama):
    from compress.runtime.causal import CausalRunner, left_pad

    run = CausalRunner(llama)
    short, long = [5, 6, 7], [9, 10, 11, 12, 13]
    ids, mask = left_pad([short, long])
    batched = run.greedy(ids, 6, mask)
    alone = run.greedy(np.asarray([short]), 6)
    assert batched[0].tolist() == alone[0].tolist()

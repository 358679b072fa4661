"""Peer runtimes (llama.cpp, onnxruntime-genai) in the one bench: timed through their own loop beside our models, in
the same interleaved rounds, batch 1 only. The runtime is replaced by a fake with known timings, so this runs
without the extras; tests/runtime/test_peers.py runs the real ones when installed."""

from __future__ import annotations

import time

import pytest


class FakePeer:
    """A peer whose prefill takes 20 ms and whose decode takes 5 ms a token."""

    kind = "llamacpp"

    def __init__(self, path, threads=2):
        self.path, self.tokens = path, []

    def prefill(self, prompt_ids, max_new_tokens=128):
        time.sleep(0.02)
        self.tokens = [1]
        return 0.02

    def decode(self, n):
        time.sleep(0.005 * n)
        return 0.005 * n

    def info(self):
        return {"runtime": "fake", "model": str(self.path)}

    def close(self):
        pass


def test_a_peer_is_timed_beside_our_model_at_batch_1(monkeypatch):
    import compress.runtime.peers as peers
    from compress.evaluation.latency.bench import BenchSpec, bench
    from compress.evaluation.latency.workers import backend_of, peer_of

    # setup
    monkeypatch.setattr(peers, "open_peer", lambda kind, path, threads=2: FakePeer(path, threads))
    spec = BenchSpec(batch_sizes=[1, 2], seq_lens=[8], threads=1, rounds=2, warmup=0, iters=2, new_tokens=4,
                     causal_iters_per_round=1, causal_warmup=0, isolate=False, busy="ignore")
    # execute
    out = bench(["llamacpp:teacher-q8_0.gguf", "tiny:llama"], spec, labels=["llama.cpp-q8_0", "ours"])
    # assert: the peer has a batch-1 row only, from its own loop (200 tok/s decode, 20 ms to the first token)
    rows = {(r["model"], r["batch_size"]): r for r in out["results"]}
    assert set(rows) == {("llama.cpp-q8_0", 1), ("ours", 1), ("ours", 2)}
    peer = rows[("llama.cpp-q8_0", 1)]
    assert peer["backend"] == "llama.cpp" and peer["decode_tokens_per_s"] == pytest.approx(200, rel=0.05)
    assert peer["ttft_ms"] == pytest.approx(20, rel=0.05) and peer["peak_rss_mb"] > 0
    assert peer_of("genai:out/") == ("genai", "out/") and peer_of("tiny:llama") is None
    assert backend_of("genai:out/") == "onnxruntime-genai"


def test_a_fused_folder_decodes_in_the_genai_generator_at_batch_1(llama_onnx):
    from compress.evaluation.latency.bench import BenchSpec, bench

    folder = str(llama_onnx.model.folder)
    common = dict(seq_lens=[8], rounds=1, new_tokens=4, causal_warmup=0, causal_iters_per_round=1, isolate=False,
                  busy="ignore", threads=1)
    one = bench([folder], BenchSpec(batch_sizes=[1], **common))["results"]
    two = bench([folder], BenchSpec(batch_sizes=[2], **common))["results"]
    # batch 1 (auto): onnxruntime-genai's Generator; batch 2: compress's runner, which serves any batch
    assert one[0]["loop"] == "onnxruntime-genai Generator" and one[0]["decode_tokens_per_s"] > 0
    assert two[0]["loop"].startswith("compress CausalRunner") and two[0]["batch_size"] == 2

"""The peer runners (llama.cpp, onnxruntime-genai) agree with PyTorch on the same token ids: next-token
log-probabilities and greedy tokens; and they time prefill/decode through the interface the bench calls.

Each runtime test needs its extra and skips cleanly without it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from compress.core.errors import CompressError

IDS = [17, 250, 3, 99, 140, 7, 61, 300, 12, 45, 208, 5, 77, 123, 9, 31]


def _sharpen(module, seed: int = 0):
    """Larger random weights: peaked next-token distributions, so greedy tokens are not near-ties (the default
    init gives near-uniform logits and greedy decoding that repeats one token)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5, generator=gen)


def _reference(model, ids, n_new):
    """PyTorch's (T-1, V) log-probabilities of `ids` and its greedy continuation of them."""
    import torch

    from compress.runtime.causal import CausalRunner

    with torch.no_grad():
        logits = model.module(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)[:-1].numpy()
    greedy = CausalRunner(model).greedy(np.array([ids], dtype=np.int64), n_new)[0].tolist()
    return logp, greedy


def _interface(runner, new_tokens=7):
    """What the bench worker calls: prefill(ids, new_tokens) then decode(new_tokens); returns the 1 + new_tokens
    greedy tokens."""
    ttft = runner.prefill(np.array(IDS[:8], dtype=np.int64), new_tokens)
    secs = runner.decode(new_tokens)
    assert ttft > 0 and secs > 0 and len(runner.tokens) == 1 + new_tokens
    with pytest.raises(CompressError, match="new_tokens"):
        runner.decode(1)  # prefill left room for new_tokens more only
    assert runner.info()["vocab_size"] == 320
    return runner.tokens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny:llama (sharpened) and its saved Hugging Face folder."""
    from compress.models.load import load_model

    model = load_model("tiny:llama")
    _sharpen(model.module)
    folder = tmp_path_factory.mktemp("peers") / "tiny-llama"
    model.save(folder)
    return model, folder


@pytest.fixture(scope="module")
def ggufs(tiny, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("sentencepiece")
    from compress.export.peers import quantize_gguf, to_gguf

    out = tmp_path_factory.mktemp("gguf")
    # The tiny byte-level BPE is trained in code; its pre-tokenization is GPT-2's (llama.cpp does not know its hash).
    f32 = to_gguf(tiny[1], out / "tiny-f32.gguf", "f32", pre_tokenizer="gpt-2")
    return {"f32": f32, "q8_0": quantize_gguf(f32, out / "tiny-q8_0.gguf", "Q8_0")}


def test_llamacpp_f32_matches_pytorch(tiny, ggufs):
    from compress.runtime.peers import LlamaCppRunner

    full_ref, _ = _reference(tiny[0], IDS, 1)
    ref_logp, ref_greedy = _reference(tiny[0], IDS[:8], 8)
    # With an f32 KV cache the f32 GGUF is PyTorch's model to float rounding (~1e-5 measured).
    exact = LlamaCppRunner(ggufs["f32"], threads=2, n_ctx=256, kv_cache="f32")
    try:
        logp = exact.log_probs(IDS)
        assert logp.shape == (len(IDS) - 1, 320) and logp.dtype == np.float32
        assert np.abs(logp - full_ref).max() < 1e-3
        assert np.abs(exact.log_probs(IDS[:8]) - ref_logp).max() < 1e-3  # the scorer is reused for a shorter input
        assert _interface(exact) == ref_greedy
    finally:
        exact.close()
    # llama.cpp's default f16 KV cache (what its users run) rounds keys and values: close, not exact.
    runner = LlamaCppRunner(ggufs["f32"], threads=2, n_ctx=256)
    try:
        assert np.abs(runner.log_probs(IDS) - full_ref).max() < 5e-2
        assert _interface(runner) == ref_greedy
        assert runner.info()["runtime"] == "llama.cpp" and runner.info()["kv_cache"] == "f16"
    finally:
        runner.close()


def test_llamacpp_q8_0_stays_close(tiny, ggufs):
    from compress.runtime.peers import open_peer

    ref_logp, ref_greedy = _reference(tiny[0], IDS, 4)
    runner = open_peer("llamacpp", ggufs["q8_0"], threads=2)
    try:
        logp = runner.log_probs(IDS)
        kl = (np.exp(ref_logp) * (ref_logp - logp)).sum(-1).mean()
        # the tiny model's rows are 32 wide (one Q8_0 block a row): coarse. Measured 0.038 (heads of 16 dimensions).
        assert kl < 0.08 and np.abs(logp - ref_logp).mean() < 0.3
        assert (logp.argmax(-1) == ref_logp.argmax(-1)).mean() >= 0.8
        runner.prefill(IDS, 3)
        runner.decode(3)
        assert runner.tokens[:2] == ref_greedy[:2]
    finally:
        runner.close()


def test_genai_fp32_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("onnx_ir")
    import copy

    import torch
    from transformers import LlamaForCausalLM

    from compress.export.peers import to_genai
    from compress.models.artifacts import TorchModel
    from compress.models.load import load_model
    from compress.runtime.peers import GenaiRunner

    # onnxruntime's CPU GroupQueryAttention (what the builder emits) needs a head size that is a multiple of 16;
    # tiny:llama's is 8, so the same architecture is widened to 64 (4 heads of 16, 2 KV heads).
    base = load_model("tiny:llama")
    config = copy.deepcopy(base.module.config)
    config.hidden_size, config.intermediate_size, config.head_dim = 64, 128, 16
    torch.manual_seed(0)
    model = TorchModel(LlamaForCausalLM(config).eval(), base.task, tokenizer=base.tokenizer, source="tiny:llama-64")
    _sharpen(model.module)
    model.save(tmp_path / "hf")
    folder = to_genai(tmp_path / "hf", tmp_path / "genai-fp32", "fp32")

    ref_logp, ref_greedy = _reference(model, IDS[:8], 8)
    runner = GenaiRunner(folder, threads=2)
    try:
        full_ref, _ = _reference(model, IDS, 1)
        logp = runner.log_probs(IDS)
        assert logp.shape == (len(IDS) - 1, 320) and np.abs(logp - full_ref).max() < 1e-3
        assert _interface(runner) == ref_greedy
        assert runner.info()["runtime"] == "onnxruntime-genai"
    finally:
        runner.close()


def test_missing_extra_is_one_line_error(monkeypatch, tmp_path):
    from compress.runtime.peers import GenaiRunner, LlamaCppRunner, open_peer

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("llama_cpp", "onnxruntime_genai") else real(name, *a))
    for call, pip in [(lambda: LlamaCppRunner(tmp_path / "m.gguf"), "pip install 'compress[llamacpp]'"),
                      (lambda: GenaiRunner(tmp_path), "pip install 'compress[genai]'"),
                      (lambda: open_peer("genai", tmp_path), "pip install 'compress[genai]'")]:
        with pytest.raises(CompressError) as e:
            call()
        assert "\n" not in str(e.value) and pip in str(e.value)
    with pytest.raises(CompressError, match="unknown peer runtime"):
        open_peer("vllm", tmp_path)


def test_decode_before_prefill_is_an_error(ggufs):
    from compress.runtime.peers import LlamaCppRunner

    runner = LlamaCppRunner(ggufs["f32"], threads=1, n_ctx=64)
    try:
        with pytest.raises(CompressError, match="prefill"):
            runner.decode(1)
        with pytest.raises(CompressError, match="n_ctx"):
            runner.prefill(IDS, 64)
    finally:
        runner.close()

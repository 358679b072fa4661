"""Run a decoder in the runtimes users deploy instead of `compress` ("peers"), so the bench can time them on the
same model and score them on the same token ids: llama.cpp (a GGUF file, through llama-cpp-python) and
onnxruntime-genai (a folder written by its model builder, with `genai_config.json`).

Both runners are driven by token ids only: neither runtime's tokenizer is used (the onnxruntime-genai 0.11 tokenizer
shows raw byte-level symbols with some BPE tokenizers, and both must see exactly the ids our PyTorch stage sees).
Each runner has the same calls, all the decoder bench needs (`open_peer(kind, path, threads)` makes one):

    ttft = runner.prefill(prompt_ids, new_tokens)  # seconds from request to the first greedy token
    secs = runner.decode(n)                        # seconds for n <= new_tokens more greedy tokens (a forward each)
    runner.tokens                                  # the greedy tokens so far: the first + the decoded ones
    lp = runner.log_probs(ids)                     # (T-1, V) float32 next-token log-probabilities
    runner.info()                                  # runtime, package version, model, threads, vocab_size

They run the loops their users run: llama-cpp-python `Llama(n_threads=, n_batch=512, logits_all=False)` with
`eval` / `sample(temp=0)` (llama.cpp's greedy sampler), and onnxruntime-genai `Generator` with `append_tokens` /
`generate_next_token` (greedy search, `do_sample=False`). The models stay loaded between requests, as a server
keeps them; a request's own set-up (llama.cpp: `reset()`, genai: a new `Generator`, whose KV buffer is allocated for
`prompt + 1 + new_tokens`) counts in the time to first token.

Log-probabilities: llama.cpp scores with a second context of the same file made with `logits_all=True` (the timing
context keeps `logits_all=False`); onnxruntime-genai returns the builder graph's `logits` output for every appended
token through `Generator.get_output("logits")`.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from compress.core.errors import CompressError

# kind -> (importable module(s), the distribution to name, the extra that installs it)
EXTRAS = {
    "llamacpp": (("llama_cpp",), "llama-cpp-python", "pip install 'compress[llamacpp]'  (compiles llama.cpp, ~20 min)"),
    "genai": (("onnxruntime_genai", "onnx_ir"), "onnxruntime-genai", "pip install 'compress[genai]'"),
}


def require(kind: str) -> None:
    """Raise a one-line CompressError naming the pip command when the extra for peer `kind` is not installed."""
    if kind not in EXTRAS:
        raise CompressError(f"unknown peer runtime '{kind}'", f"use one of {', '.join(EXTRAS)}")
    modules, dist, pip = EXTRAS[kind]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise CompressError(f"{dist} is not installed ({', '.join(missing)} missing)", pip)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)


def _ids(ids: Sequence[int] | np.ndarray) -> list[int]:
    arr = np.asarray(ids).reshape(-1)
    if arr.size == 0:
        raise CompressError("empty token ids", "pass at least one token id")
    return [int(t) for t in arr]


class PeerRunner(Protocol):
    """What the decoder bench calls on a peer runtime (both runners below implement it)."""

    kind: str
    tokens: list[int]

    def prefill(self, prompt_ids: Sequence[int] | np.ndarray, new_tokens: int = 128) -> float: ...

    def decode(self, n: int) -> float: ...

    def log_probs(self, ids: Sequence[int] | np.ndarray) -> np.ndarray: ...

    def info(self) -> dict: ...

    def close(self) -> None: ...


class LlamaCppRunner:
    """A GGUF file in llama.cpp through llama-cpp-python.

    Args:
        gguf_path: the model file.
        threads: llama.cpp threads, for both the prompt (`n_threads_batch`) and decoding (`n_threads`).
        n_ctx: the context allocated for timing (prompt + new tokens must fit).
        kv_cache: "f16", llama.cpp's default and what its users run (timing and perplexity), or "f32" (exact
            parity checks: with an f32 GGUF it matches PyTorch to ~1e-5 in log-probabilities, where the f16 cache
            rounds keys and values).
    """

    kind = "llamacpp"
    KV_TYPES = {"f16": 1, "f32": 0}  # GGML_TYPE_F16, GGML_TYPE_F32

    def __init__(self, gguf_path: str | Path, threads: int = 2, n_ctx: int = 2048, kv_cache: str = "f16"):
        require("llamacpp")
        self.path = Path(gguf_path)
        if not self.path.is_file():
            raise CompressError(f"GGUF file '{self.path}' not found", "write one with compress.export.peers.to_gguf")
        if kv_cache not in self.KV_TYPES:
            raise CompressError(f"unknown llama.cpp KV cache type '{kv_cache}'", "use f16 (the default) or f32")
        self.threads = int(threads)
        self.n_ctx = int(n_ctx)
        self.kv_cache = kv_cache
        self.llm = self._load(self.n_ctx, logits_all=False)
        self._scorer = None  # a second context with logits_all=True, made on the first log_probs call
        self.tokens: list[int] = []
        self._budget = 0

    def _load(self, n_ctx: int, logits_all: bool):
        from llama_cpp import Llama

        try:
            return Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=self.threads, n_threads_batch=self.threads,
                         n_batch=512, logits_all=logits_all, type_k=self.KV_TYPES[self.kv_cache],
                         type_v=self.KV_TYPES[self.kv_cache], verbose=False)
        except (ValueError, RuntimeError) as e:
            raise CompressError(f"llama.cpp cannot load '{self.path}': {str(e).splitlines()[0]}",
                                "convert it again with the installed llama-cpp-python (to_gguf)") from e

    def prefill(self, prompt_ids: Sequence[int] | np.ndarray, new_tokens: int = 128) -> float:
        """Evaluate the prompt from an empty cache and pick the first greedy token; returns seconds.
        `decode` may then produce up to `new_tokens` more."""
        ids = _ids(prompt_ids)
        if len(ids) + 1 + new_tokens > self.n_ctx:
            raise CompressError(f"{len(ids)} prompt + {1 + new_tokens} new tokens exceed n_ctx={self.n_ctx}",
                                "pass a larger n_ctx to LlamaCppRunner")
        t0 = time.perf_counter()
        self.llm.reset()
        self.llm.eval(ids)
        token = self.llm.sample(temp=0.0)
        elapsed = time.perf_counter() - t0
        self.tokens = [int(token)]
        self._budget = new_tokens
        return elapsed

    def decode(self, n: int) -> float:
        """n more greedy tokens after `prefill` (each: one forward on the last token, then the greedy sampler)."""
        if not self.tokens:
            raise CompressError("decode() before prefill()", "call prefill(prompt_ids) first")
        if n > self._budget:
            raise CompressError(f"decode({n}) past the {self._budget} tokens prefill left room for",
                                "pass a larger new_tokens to prefill")
        llm, token, out = self.llm, self.tokens[-1], []
        t0 = time.perf_counter()
        for _ in range(n):
            llm.eval([token])
            token = llm.sample(temp=0.0)
            out.append(token)
        elapsed = time.perf_counter() - t0
        self.tokens += [int(t) for t in out]
        self._budget -= n
        return elapsed

    def log_probs(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """(T-1, V) float32: log p(ids[t+1] | ids[:t+1]) rows, from one evaluation of `ids` with logits_all=True."""
        ids = _ids(ids)
        need = max(256, -(-len(ids) // 256) * 256)  # the scorer's logits buffer is n_ctx x V: keep it small
        if self._scorer is None or self._scorer.n_ctx() < len(ids):
            if self._scorer is not None:
                self._scorer.close()
            self._scorer = self._load(need, logits_all=True)
        self._scorer.reset()
        self._scorer.eval(ids)
        logits = np.array(self._scorer.scores[: len(ids) - 1], dtype=np.float32, copy=True)
        return _log_softmax(logits)

    def info(self) -> dict:
        from importlib.metadata import version

        return {"runtime": "llama.cpp", "package": f"llama-cpp-python {version('llama-cpp-python')}",
                "model": str(self.path), "threads": self.threads, "vocab_size": int(self.llm.n_vocab()),
                "n_ctx": self.n_ctx, "kv_cache": self.kv_cache}

    def close(self) -> None:
        for llm in (self.llm, self._scorer):
            if llm is not None:
                llm.close()
        self._scorer = None


class GenaiRunner:
    """A folder written by onnxruntime-genai's model builder, in its `Model` / `Generator`.

    Args:
        folder: the builder's output (`genai_config.json` + `model.onnx`).
        threads: ONNX Runtime intra-op threads (inter-op 1), set through the config overlay.
    """

    kind = "genai"

    def __init__(self, folder: str | Path, threads: int = 2):
        require("genai")
        import onnxruntime_genai as og

        self.folder = Path(folder)
        if not (self.folder / "genai_config.json").is_file():
            raise CompressError(f"'{self.folder}' has no genai_config.json",
                                "build one with compress.export.peers.to_genai")
        self.threads = int(threads)
        config = og.Config(str(self.folder))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": self.threads, "inter_op_num_threads": 1}}}}))
        try:
            self.model = og.Model(config)
        except Exception as e:  # onnxruntime-genai raises plain RuntimeError/OrtException with a multi-line message
            raise CompressError(f"onnxruntime-genai cannot load '{self.folder}': {str(e).splitlines()[0]}",
                                "rebuild it with compress.export.peers.to_genai") from e
        meta = json.loads((self.folder / "genai_config.json").read_text())["model"]
        self.context, self.vocab_size = int(meta["context_length"]), int(meta["vocab_size"])
        self.generator = None
        self.tokens: list[int] = []
        self._budget = 0

    def _generator(self, max_length: int):
        import onnxruntime_genai as og

        if max_length > self.context:
            raise CompressError(f"{max_length} tokens exceed the model's context of {self.context}",
                                "use a shorter prompt or fewer new tokens")
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, do_sample=False)
        return og.Generator(self.model, params)

    def prefill(self, prompt_ids: Sequence[int] | np.ndarray, new_tokens: int = 128) -> float:
        """A new Generator sized for prompt + 1 + new_tokens, the prompt appended, the first greedy token picked;
        returns seconds. `decode` may then produce up to `new_tokens` more."""
        ids = np.asarray(_ids(prompt_ids), dtype=np.int32)
        self.generator = None  # release the previous request's KV buffer before timing this one
        t0 = time.perf_counter()
        gen = self._generator(len(ids) + 1 + new_tokens)
        gen.append_tokens(ids)
        gen.generate_next_token()  # picks from the prompt's last logits: no forward
        token = int(gen.get_next_tokens()[0])
        elapsed = time.perf_counter() - t0
        self.generator, self.tokens, self._budget = gen, [token], new_tokens
        return elapsed

    def decode(self, n: int) -> float:
        """n more greedy tokens after `prefill` (each `generate_next_token` runs one forward on the last token)."""
        if self.generator is None:
            raise CompressError("decode() before prefill()", "call prefill(prompt_ids) first")
        if n > self._budget:
            raise CompressError(f"decode({n}) past the {self._budget} tokens prefill left room for",
                                "pass a larger new_tokens to prefill")
        gen, out = self.generator, []
        t0 = time.perf_counter()
        for _ in range(n):
            gen.generate_next_token()
            out.append(gen.get_next_tokens()[0])
        elapsed = time.perf_counter() - t0
        self.tokens += [int(t) for t in out]
        self._budget -= n
        return elapsed

    def log_probs(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """(T-1, V) float32 next-token log-probabilities of `ids`.

        `append_tokens(ids)` runs the builder's graph once over all of them, and `get_output("logits")` returns its
        logits output for every appended position (the graph's `logits` is (batch, sequence, vocab)). A graph that
        keeps only the last position is read one appended token at a time instead."""
        arr = np.asarray(_ids(ids), dtype=np.int32)
        gen = self._generator(len(arr) + 1)
        gen.append_tokens(arr)
        logits = np.asarray(gen.get_output("logits"), dtype=np.float32)
        if logits.ndim == 3 and logits.shape[1] == len(arr):
            rows = logits[0, :-1]
        else:
            gen = self._generator(len(arr) + 1)
            rows = []
            for token in arr[:-1]:
                gen.append_tokens(np.array([token], dtype=np.int32))
                rows.append(np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1))
            rows = np.stack(rows) if rows else np.zeros((0, logits.shape[-1]), np.float32)
        return _log_softmax(rows)

    def info(self) -> dict:
        from importlib.metadata import version

        return {"runtime": "onnxruntime-genai", "package": f"onnxruntime-genai {version('onnxruntime-genai')}",
                "model": str(self.folder), "threads": self.threads, "vocab_size": self.vocab_size}

    def close(self) -> None:
        self.generator = None
        self.model = None


RUNNERS = {"llamacpp": LlamaCppRunner, "genai": GenaiRunner}


def open_peer(kind: str, path: str | Path, threads: int = 2) -> PeerRunner:
    """`open_peer("llamacpp", "model.gguf", 2)` or `open_peer("genai", "builder_out/", 2)`: a loaded runner."""
    require(kind)
    return RUNNERS[kind](path, threads=threads)

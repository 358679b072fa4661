"""Bench workers: one model each, in this process or a child process driven over stdin/stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from compress.core.errors import CompressError
from compress.evaluation.latency import memory
from compress.evaluation.latency.timing import time_runs
from compress.models.causal import CAUSAL_TASK, is_causal
from compress.runtime.causal import CausalRunner

ONNX_SUFFIXES = (".onnx", ".ort")


QUIET_CPU_SHARE = 0.2  # idle workers using less than a fifth of one core are asleep, not spinning


QUIET_WINDOW_S = 0.01


QUIET_MAX_WAIT_S = 0.5


# Peer runtimes timed beside our stages: `llamacpp:model.gguf`, `genai:builder_folder` (see `compress.runtime.peers`).
PEERS = {"llamacpp": "llama.cpp", "genai": "onnxruntime-genai"}


def peer_of(source: str) -> tuple[str, str] | None:
    """(peer kind, path) of a peer source such as `llamacpp:teacher-q8_0.gguf`, else None."""
    kind, sep, path = str(source).partition(":")
    return (kind, path) if sep and kind in PEERS else None


def backend_of(source: str) -> str:
    """`onnxruntime` for .onnx/.ort files and folders holding model.onnx (as `load_model` decides), the peer's name
    for a peer source (`llamacpp:...`, `genai:...`), else `pytorch`."""
    peer = peer_of(source)
    if peer:
        return PEERS[peer[0]]
    path = Path(str(source)).expanduser()
    if path.suffix in ONNX_SUFFIXES or (path.is_dir() and (path / "model.onnx").exists()):
        return "onnxruntime"
    return "pytorch"


def fused_folder(source: str) -> Path | None:
    """The folder of an ONNX decoder that onnxruntime-genai's generator runs (model.onnx + genai_config.json, as the
    fused export writes it), else None."""
    path = Path(str(source)).expanduser()
    folder = path if path.is_dir() else path.parent
    if path.suffix not in ("", ".onnx") or not (folder / "model.onnx").is_file():
        return None
    return folder if (folder / "genai_config.json").is_file() else None


def generator_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime_genai") is not None


def worker_env(backend: str, policy: str) -> dict[str, str | None]:
    """Variables a bench worker starts with (None = removed) so that it waits as `policy` says.

    native: PyTorch with OMP_WAIT_POLICY unset (its OpenMP runtime spins briefly after a parallel region, then
    sleeps), as PyTorch users run it; ONNX Runtime with its own intra-op pool and its default spinning (the CPU
    wheel does not use OpenMP), so OMP_WAIT_POLICY is unset there too. passive / active set OMP_WAIT_POLICY.
    """
    if policy == "native":
        return {"OMP_WAIT_POLICY": None}
    return {"OMP_WAIT_POLICY": policy.upper()}


def _cpu_seconds(procs: list) -> float:
    """User + system CPU seconds used so far by these worker processes (all their threads)."""
    import psutil

    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _wait_quiet(procs: list) -> None:
    """Before a timed slice, wait (at most QUIET_MAX_WAIT_S) until the idle workers' threads stop spinning."""
    if not procs:
        return
    deadline = time.perf_counter() + QUIET_MAX_WAIT_S
    last = _cpu_seconds(procs)
    while time.perf_counter() < deadline:
        time.sleep(QUIET_WINDOW_S)
        now = _cpu_seconds(procs)
        if now - last < QUIET_CPU_SHARE * QUIET_WINDOW_S:
            return
        last = now


def _sync(device: str, is_onnx: bool) -> Callable[[], None]:
    if device == "cuda" and not is_onnx:
        import torch

        return torch.cuda.synchronize
    return lambda: None  # ORT's run returns when its outputs are ready (IOBinding outputs are synchronized)


class _LocalWorker:
    """Times one model in this process (used when isolate=False and by the worker process itself).

    Args:
        isolated: True in a worker process (a fresh interpreter of its own), False in the bench's process.
    """

    def __init__(self, source: str, device: str, threads: int, load_kwargs: dict | None = None,
                 isolated: bool = False):
        # Peak memory from here on (see `memory`): reset the high-water mark before anything is loaded.
        if memory.reset_peak():
            self.rss_method = "clear_refs" if isolated else "in_process"
        else:  # a fresh interpreter's VmHWM is its own; the bench's process needs one started for it
            self.rss_method = "fresh_interpreter" if isolated else None
        import torch

        from compress.models.artifacts import OnnxModel
        from compress.models.load import load_model

        torch.set_num_threads(threads)
        self.model = load_model(source, **(load_kwargs or {}))
        self.device = device
        self.is_onnx = isinstance(self.model, OnnxModel)
        self.causal = is_causal(self.model)
        self.info: dict = {"backend": "onnxruntime" if self.is_onnx else "pytorch", "device": device,
                           "task": self.model.task, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
        config = getattr(getattr(self.model, "module", None), "config", None)
        if not self.is_onnx and hasattr(config, "_attn_implementation"):  # eager / sdpa / ...: as it was loaded
            self.info["attn_implementation"] = config._attn_implementation
        if self.causal:  # decoders are timed through the same runner that scores them
            self.runner = CausalRunner(self.model, device=device, threads=threads)
            self.session = getattr(self.runner, "session", None)
            self.info["loop"] = "compress CausalRunner" + (" (I/O binding)" if self.is_onnx else "")
            self.info["providers"] = self.session.get_providers() if self.is_onnx else [f"torch-{device}"]
        elif self.is_onnx:
            from compress.runtime.ort import make_session

            self.session = make_session(self.model.path, device=device, threads=threads)
            self.info["providers"] = self.session.get_providers()
        else:
            self.model.module.to(device).eval()
            self.info["providers"] = [f"torch-{device}"]
        self.info["load_rss_mb"] = memory.status_mb("VmHWM")  # peak while loading (runtime + model + session)

    def inputs(self, batch_size: int, seq_len: int) -> dict:
        """Full-length inputs of real vocabulary tokens (text) or random images: no padding to skip."""
        import torch

        gen = torch.Generator().manual_seed(0)
        if self.model.task in ("text-classification", "feature-extraction"):
            vocab = len(self.model.tokenizer) if self.model.tokenizer is not None else 1000
            ids = torch.randint(min(1000, vocab // 2), vocab, (batch_size, seq_len), generator=gen)
            tok = self.model.tokenizer
            if tok is not None and tok.cls_token_id is not None:
                ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        return {"inputs": torch.rand((batch_size, *self._image_shape()), generator=gen)}

    def _image_shape(self) -> tuple:
        if self.is_onnx:
            dims = self.session.get_inputs()[0].shape[1:]
            return tuple(d if isinstance(d, int) else 8 for d in dims)
        return tuple(self.model.example_shape()[0])  # config, first layer or --input-shape (digits: 1x8x8)

    def run(self, batch_size: int, seq_len: int, warmup: int, iters: int) -> list[float]:
        batch = self.inputs(batch_size, seq_len)
        if self.is_onnx:
            fn, sync = self._ort_fn(batch)
        else:
            fn, sync = self._torch_fn(batch)
        return time_runs(fn, warmup, iters, sync)

    def _torch_fn(self, batch):
        import torch

        batch = {k: v.to(self.device) for k, v in batch.items()}
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)

        def fn():
            with torch.inference_mode():
                return self.model.logits(batch)

        return fn, sync

    def _ort_fn(self, batch):
        names = [i.name for i in self.session.get_inputs()]
        feed = {n: batch[n].numpy() for n in names}
        if self.device != "cuda":
            return (lambda: self.session.run(None, feed)), (lambda: None)
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        for out in self.session.get_outputs():
            binding.bind_output(out.name, "cuda")
        return (lambda: self.session.run_with_iobinding(binding)), binding.synchronize_outputs

    def run_causal(self, batch_size: int, prompt_len: int, warmup: int, iters: int, new_tokens: int) -> dict:
        """Generation timed as users run it: prefill a prompt of real-vocabulary tokens (time to first token), then
        `new_tokens` greedy decode steps with the KV cache. Per iteration: prefill ms and decode ms per step."""
        self.runner.check_length(prompt_len + new_tokens + 1)
        vocab = len(self.model.tokenizer) if self.model.tokenizer is not None else 1000
        rng = np.random.default_rng(0)
        ids = rng.integers(min(100, vocab // 2), vocab, (batch_size, prompt_len)).astype(np.int64)
        sync = _sync(self.device, self.is_onnx)
        prefill, decode = [], []
        mask = np.ones((batch_size, prompt_len + new_tokens), np.int64)  # sliced per step, never re-allocated
        for i in range(warmup + iters):
            start = time.perf_counter()
            token, past = self.runner.next_tokens(ids, mask[:, :prompt_len])
            sync()
            first = time.perf_counter()
            for step in range(1, new_tokens + 1):
                token, past = self.runner.next_tokens(token[:, None], mask[:, :prompt_len + step], past)
            sync()
            end = time.perf_counter()
            if i >= warmup:
                prefill.append((first - start) * 1000.0)
                decode.append((end - first) * 1000.0 / new_tokens)
        return {"prefill_ms": prefill, "decode_ms": decode}

    def peak_memory(self) -> dict:
        """Peak resident memory (VmHWM, MB) after loading (`load_rss_mb`) and so far, timed runs included
        (`peak_rss_mb`), and how it was read (`rss_method`, see `memory`); peak CUDA memory of torch models.
        In the bench's process (`in_process`) the figures are the whole process's, not this model's alone."""
        out = {"peak_rss_mb": memory.status_mb("VmHWM"), "load_rss_mb": self.info.get("load_rss_mb"),
               "rss_method": self.rss_method}
        if self.device == "cuda" and not self.is_onnx:
            import torch

            out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out

    def placement(self, batch_size: int, seq_len: int) -> dict:
        """Nodes per execution provider, from one profiled run (ONNX only)."""
        if not self.is_onnx:
            return {}
        import tempfile

        from compress.runtime.ort import make_session, nodes_per_provider

        with tempfile.TemporaryDirectory() as tmp:
            session = make_session(self.model.path, device=self.device, profile_dir=tmp, threads=1)
            if self.causal:  # a short prompt with an empty cache runs every node of the decoder graph
                feed = self.runner.prefill_feed(batch_size, min(seq_len, 16))
            else:
                batch = self.inputs(batch_size, seq_len)
                feed = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
            return nodes_per_provider(session, feed)


class _PeerWorker:
    """A peer runtime (llama.cpp, onnxruntime-genai) timed as its users run it: prefill a prompt of real-vocabulary
    token ids, then greedy tokens, batch 1 (what both runtimes' generation loops serve)."""

    def __init__(self, source: str, device: str, threads: int, load_kwargs: dict | None = None,
                 isolated: bool = False, stage: bool = False):
        """`stage`: `source` is one of our fused ONNX folders (`genai:FOLDER`) timed in onnxruntime-genai's
        generator, reported as an onnxruntime stage rather than as a peer."""
        from compress.runtime.peers import open_peer

        if device != "cpu":
            raise CompressError(f"the peer '{source}' is timed on the CPU only", "drop cuda from the bench devices")
        self.rss_method = ("clear_refs" if isolated else "in_process") if memory.reset_peak() else (
            "fresh_interpreter" if isolated else None)
        kind, path = peer_of(source)
        self.peer = open_peer(kind, path, threads)
        self.device, self.is_onnx, self.causal = device, False, True
        self.info: dict = {"backend": PEERS[kind], "device": device, "task": CAUSAL_TASK, "providers": [PEERS[kind]],
                           "max_batch": 1, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                           "peer": self.peer.info()}
        if stage:
            self.info.update({"backend": "onnxruntime", "providers": ["CPUExecutionProvider"],
                              "loop": "onnxruntime-genai Generator"})
        self.info["load_rss_mb"] = memory.status_mb("VmHWM")
        self.vocab = int(self.info["peer"].get("vocab_size") or 1000)

    def run_causal(self, batch_size: int, prompt_len: int, warmup: int, iters: int, new_tokens: int) -> dict:
        """As `_LocalWorker.run_causal`, through the peer's own loop (its request set-up counts in the prefill)."""
        ids = np.random.default_rng(0).integers(min(100, self.vocab // 2), self.vocab, prompt_len).astype(np.int64)
        prefill, decode = [], []
        for i in range(warmup + iters):
            first = self.peer.prefill(ids, new_tokens)
            rest = self.peer.decode(new_tokens)
            if i >= warmup:
                prefill.append(first * 1000.0)
                decode.append(rest * 1000.0 / new_tokens)
        return {"prefill_ms": prefill, "decode_ms": decode}

    def peak_memory(self) -> dict:
        return {"peak_rss_mb": memory.status_mb("VmHWM"), "load_rss_mb": self.info.get("load_rss_mb"),
                "rss_method": self.rss_method}

    def placement(self, batch_size: int, seq_len: int) -> dict:
        return {}

    def close(self) -> None:
        self.peer.close()


def local_worker(source: str, device: str, threads: int, load_kwargs: dict | None = None, isolated: bool = False,
                 loop: str = "runner"):
    """The worker that times `source` in this process: a peer runtime's own loop, or one of our models (a fused
    decoder folder in onnxruntime-genai's generator when `loop` is "generator" and it can run there)."""
    if peer_of(source):
        return _PeerWorker(source, device, threads, load_kwargs, isolated=isolated)
    folder = fused_folder(source) if loop == "generator" and device == "cpu" else None
    if folder is not None and generator_available():
        return _PeerWorker(f"genai:{folder}", device, threads, load_kwargs, isolated=isolated, stage=True)
    return _LocalWorker(source, device, threads, load_kwargs, isolated=isolated)


class _ProcessWorker:
    """A `_LocalWorker` in a child process, driven over stdin/stdout with one JSON line per message."""

    def __init__(self, source: str, device: str, threads: int, load_kwargs: dict | None = None,
                 wait_policy: str = "native", loop: str = "runner"):
        import tempfile

        import psutil

        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        for key, value in worker_env(backend_of(source), wait_policy).items():  # before the runtime starts
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        self.source = source
        # The worker's stderr goes to a file: its last line is the cause when the worker dies.
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "compress.evaluation.latency.worker_main"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)
        self.process = psutil.Process(self.proc.pid)  # its CPU time shows whether it spins while others are timed
        try:
            self.info = {**self._ask({"source": source, "device": device, "threads": threads,
                                      "load_kwargs": load_kwargs or {}, "loop": loop}), "isolated": True}
        except CompressError:
            self.close()
            raise

    def _ask(self, message: dict):
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.proc.wait(timeout=30)
            self.stderr.seek(0)
            lines = [x.strip() for x in self.stderr.read().splitlines() if x.strip()]
            cause = lines[-1] if lines else f"exit code {self.proc.returncode}"
            raise CompressError(f"the benchmark worker for '{self.source}' died ({cause[:300]})",
                                "run with --no-isolate to debug it")
        reply = json.loads(line)
        if "error" in reply:
            raise CompressError(reply["error"], reply.get("fix") or "check the model")
        return reply["result"]

    def run(self, batch_size, seq_len, warmup, iters):
        return self._ask({"op": "run", "args": [batch_size, seq_len, warmup, iters]})

    def placement(self, batch_size, seq_len):
        return self._ask({"op": "placement", "args": [batch_size, seq_len]})

    def run_causal(self, batch_size, prompt_len, warmup, iters, new_tokens):
        return self._ask({"op": "run_causal", "args": [batch_size, prompt_len, warmup, iters, new_tokens]})

    def peak_memory(self):
        return self._ask({"op": "peak_memory", "args": []})

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        finally:
            self.stderr.close()


def fresh_memory(source: str, device: str, threads: int, load_kwargs: dict | None, wait_policy: str,
                 shapes: list[tuple[int, int]], new_tokens: int, loop: str = "runner") -> dict:
    """Peak memory of one model read in a freshly started interpreter (for in-process benches where the peak of
    the bench's own process cannot be reset): load it, run every shape once, read its VmHWM."""
    worker = _ProcessWorker(source, device, threads, load_kwargs, wait_policy, loop)
    try:
        for b, s in shapes:
            if worker.info.get("task") == CAUSAL_TASK:
                worker.run_causal(b, s, 0, 1, new_tokens)
            else:
                worker.run(b, s, 0, 1)
        return {**worker.peak_memory(), "rss_method": "fresh_interpreter"}
    finally:
        worker.close()

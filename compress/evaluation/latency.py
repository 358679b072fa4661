"""The single latency protocol of the project.

Fixed threads (default: physical cores), warm-up then timed runs, p50/p90/p99 and throughput, for each batch
size x sequence length, on CPU (and CUDA when present). Each model runs in its own worker process and the
workers are driven round-robin, a slice of iterations each per round: several ONNX Runtime sessions and torch
in one process on few cores spin idle threads and ruin the numbers (shared/notes/minilm-sst2-reference.md).
On CUDA, inputs live on the device on both sides (IOBinding for ORT) and torch is synchronized before reading
the clock, so copies count the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from compress.causal import CAUSAL_TASK, CausalRunner, is_causal
from compress.errors import CompressError


class BenchSpec(BaseModel):
    """How latency is measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_sizes: list[int] = Field([1, 8], description="Batch sizes to time.")
    seq_lens: list[int] = Field([128], description="Sequence lengths to time (text models); every token is real.")
    devices: list[str] = Field(["cpu"], description="Devices: cpu, cuda ('cuda' is skipped when no GPU is present).")
    threads: int | None = Field(None, ge=1, description="Intra-op threads; default = physical cores.")
    warmup: int = Field(10, ge=0, description="Untimed runs before timing, per shape and worker.")
    iters: int = Field(60, ge=1, description="Timed runs per shape in total (split across rounds).")
    rounds: int = Field(3, ge=1, description="Round-robin rounds across models (interleaving evens out drift).")
    isolate: bool = Field(True, description="One worker process per model (recommended); False runs in-process.")
    new_tokens: int = Field(32, ge=1, description="Causal LMs: greedy tokens decoded after each prompt (seq_lens are "
                                                  "prompt lengths).")
    causal_iters_per_round: int = Field(3, ge=1, description="Causal LMs: timed generations per shape and round.")
    causal_warmup: int = Field(1, ge=0, description="Causal LMs: untimed generations before each timed slice "
                                                     "(re-warms caches after another worker ran).")
    wait_policy: Literal["native", "passive", "active"] = Field(
        "native", description="How each worker's threads wait, set per worker before its runtime starts: native = "
        "as the runtime's users run it (PyTorch: OMP_WAIT_POLICY unset, OpenMP's spin-then-sleep; ONNX Runtime: its "
        "own thread pool, default spinning); passive / active = OMP_WAIT_POLICY=PASSIVE / ACTIVE for every worker. "
        "The parent's OMP_WAIT_POLICY (e.g. PASSIVE for training) never reaches the workers.")


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def percentiles(times_ms: list[float], batch_size: int) -> dict:
    """p50/p90/p99 in ms and throughput in samples per second (from the median)."""
    t = np.asarray(times_ms)
    p50 = float(np.percentile(t, 50))
    return {"p50_ms": round(p50, 3), "p90_ms": round(float(np.percentile(t, 90)), 3),
            "p99_ms": round(float(np.percentile(t, 99)), 3), "mean_ms": round(float(t.mean()), 3),
            "throughput_per_s": round(1000.0 * batch_size / p50, 2), "runs": int(len(t))}


def causal_figures(samples: dict, batch_size: int, prompt_len: int, new_tokens: int) -> dict:
    """Decoder figures from per-iteration samples. `p50_ms` is the median decode step (ms per generated token
    at this batch), so speedups of causal stages are decode speedups."""
    decode = percentiles(samples["decode_ms"], batch_size)  # per generated token: throughput = decode tokens/s
    prefill = percentiles(samples["prefill_ms"], batch_size * prompt_len)  # per prompt: prompt tokens/s
    return {**decode, "decode_tokens_per_s": decode["throughput_per_s"],
            "prefill_tokens_per_s": prefill["throughput_per_s"], "ttft_ms": prefill["p50_ms"],
            "ttft_p90_ms": prefill["p90_ms"], "new_tokens": new_tokens}


def time_runs(fn: Callable[[], object], warmup: int, iters: int, sync: Callable[[], None] = lambda: None) -> list[float]:
    """The one timer: `warmup` untimed calls, then `iters` timed calls, each in ms (synchronized)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def environment(threads: int) -> dict:
    """CPU model and the flags that decide int8 speed, threads, GPU, and library versions."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]
    versions = {}
    for pkg in ("compress", "torch", "onnxruntime", "onnxruntime-gpu", "onnx", "transformers", "optimum", "optimum-onnx"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    env = {"cpu": cpu, "cpu_flags": [f for f in wanted if f in flags], "physical_cores": physical_cores(),
           "logical_cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
           "platform": platform.platform(), "versions": versions}
    import torch

    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


# --- wait policies: each worker as its runtime's users run it ------------------------------------------------

ONNX_SUFFIXES = (".onnx", ".ort")
QUIET_CPU_SHARE = 0.2  # idle workers using less than a fifth of one core are asleep, not spinning
QUIET_WINDOW_S = 0.01
QUIET_MAX_WAIT_S = 0.5


def backend_of(source: str) -> str:
    """`onnxruntime` for .onnx/.ort files and folders holding model.onnx (as `load_model` decides), else `pytorch`."""
    path = Path(str(source)).expanduser()
    if path.suffix in ONNX_SUFFIXES or (path.is_dir() and (path / "model.onnx").exists()):
        return "onnxruntime"
    return "pytorch"


def worker_env(backend: str, policy: str) -> dict[str, str | None]:
    """Variables a bench worker starts with (None = removed) so that it waits as `policy` says.

    native: PyTorch with OMP_WAIT_POLICY unset (its OpenMP runtime spins briefly after a parallel region, then
    sleeps), as PyTorch users run it; ONNX Runtime with its own intra-op pool and its default spinning (the CPU
    wheel does not use OpenMP), so OMP_WAIT_POLICY is unset there too. passive / active set OMP_WAIT_POLICY.
    """
    if policy == "native":
        return {"OMP_WAIT_POLICY": None}
    return {"OMP_WAIT_POLICY": policy.upper()}


def policy_record(info: dict, policy: str) -> str:
    """The wait policy a measurement ran under, as its worker reported it (one line for the results)."""
    omp = info.get("omp_wait_policy") or "unset"
    text = f"{policy}: OMP_WAIT_POLICY={omp}"
    if info.get("backend") == "onnxruntime":
        text += ", ORT intra-op spinning default (on)"
    if not info.get("isolated", False):
        text += " (in-process: the parent's policy)"
    return text


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


# --- workers -------------------------------------------------------------------------------------------------


def _sync(device: str, is_onnx: bool) -> Callable[[], None]:
    if device == "cuda" and not is_onnx:
        import torch

        return torch.cuda.synchronize
    return lambda: None  # ORT's run returns when its outputs are ready (IOBinding outputs are synchronized)


class _LocalWorker:
    """Times one model in this process (used when isolate=False and by the worker process itself)."""

    def __init__(self, source: str, device: str, threads: int, load_kwargs: dict | None = None):
        import torch

        from compress.artifacts import OnnxModel
        from compress.models import load_model

        torch.set_num_threads(threads)
        self.model = load_model(source, **(load_kwargs or {}))
        self.device = device
        self.is_onnx = isinstance(self.model, OnnxModel)
        self.causal = is_causal(self.model)
        self.info: dict = {"backend": "onnxruntime" if self.is_onnx else "pytorch", "device": device,
                           "task": self.model.task, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
        if self.causal:  # decoders are timed through the same runner that scores them
            self.runner = CausalRunner(self.model, device=device, threads=threads)
            self.session = getattr(self.runner, "session", None)
            self.info["providers"] = self.session.get_providers() if self.is_onnx else [f"torch-{device}"]
        elif self.is_onnx:
            from compress.export.ort import make_session

            self.session = make_session(self.model.path, device=device, threads=threads)
            self.info["providers"] = self.session.get_providers()
        else:
            self.model.module.to(device).eval()
            self.info["providers"] = [f"torch-{device}"]

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
        for i in range(warmup + iters):
            mask = np.ones((batch_size, prompt_len), np.int64)
            start = time.perf_counter()
            token, past = self.runner.next_tokens(ids, mask)
            sync()
            first = time.perf_counter()
            for _ in range(new_tokens):
                mask = np.concatenate([mask, np.ones((batch_size, 1), np.int64)], 1)
                token, past = self.runner.next_tokens(token[:, None], mask, past)
            sync()
            end = time.perf_counter()
            if i >= warmup:
                prefill.append((first - start) * 1000.0)
                decode.append((end - first) * 1000.0 / new_tokens)
        return {"prefill_ms": prefill, "decode_ms": decode}

    def peak_memory(self) -> dict:
        """Peak resident memory of this worker process (model load included), in MB."""
        import resource

        out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        if self.device == "cuda" and not self.is_onnx:
            import torch

            out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out

    def placement(self, batch_size: int, seq_len: int) -> dict:
        """Nodes per execution provider, from one profiled run (ONNX only)."""
        if not self.is_onnx:
            return {}
        import tempfile

        from compress.export.ort import make_session, nodes_per_provider

        with tempfile.TemporaryDirectory() as tmp:
            session = make_session(self.model.path, device=self.device, profile_dir=tmp, threads=1)
            if self.causal:  # a short prompt with an empty cache runs every node of the decoder graph
                feed = self.runner.prefill_feed(batch_size, min(seq_len, 16))
            else:
                batch = self.inputs(batch_size, seq_len)
                feed = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
            return nodes_per_provider(session, feed)


class _ProcessWorker:
    """A `_LocalWorker` in a child process, driven over stdin/stdout with one JSON line per message."""

    def __init__(self, source: str, device: str, threads: int, load_kwargs: dict | None = None,
                 wait_policy: str = "native"):
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
        self.proc = subprocess.Popen([sys.executable, "-m", "compress.evaluation.latency_worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)
        self.process = psutil.Process(self.proc.pid)  # its CPU time shows whether it spins while others are timed
        try:
            self.info = {**self._ask({"source": source, "device": device, "threads": threads,
                                      "load_kwargs": load_kwargs or {}}), "isolated": True}
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


def bench(models: list[str], spec: BenchSpec | None = None, *, labels: list[str] | None = None,
          load_kwargs: dict | None = None, on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Time each model for every device x batch size x sequence length, interleaved round-robin.

    Args:
        models: model sources (anything `load_model` takes).
        spec: the protocol settings.
        labels: display names (default: the sources).
        load_kwargs: extra `load_model` arguments for every model (e.g. task, num_labels).
        on_progress: called with (done, total) after each timed slice.

    Returns: {"environment": {...}, "spec": {...}, "results": [{model, backend, device, provider(s),
              nodes_per_provider, batch_size, seq_len, p50_ms, p90_ms, p99_ms, throughput_per_s, ...}]}
    """
    from compress.export.ort import cuda_available

    spec = spec or BenchSpec()
    threads = spec.threads or physical_cores()
    labels = labels or list(models)
    devices = [d for d in spec.devices if d == "cpu" or (d == "cuda" and cuda_available())]
    results = []
    shapes = [(b, s) for b in spec.batch_sizes for s in spec.seq_lens]
    per_round = max(1, spec.iters // spec.rounds)
    total = len(devices) * spec.rounds * len(shapes) * len(models)
    done = 0
    for device in devices:
        if spec.isolate:
            workers = [_ProcessWorker(m, device, threads, load_kwargs, spec.wait_policy) for m in models]
        else:
            workers = [_LocalWorker(m, device, threads, load_kwargs) for m in models]
        try:
            times: dict = {}
            idle_cpu: dict = {}  # (i, b, s) -> CPU seconds the other workers used while model i was timed
            for rnd in range(spec.rounds):
                for b, s in shapes:
                    for i, w in enumerate(workers):  # round-robin: every model gets a slice each round
                        others = [o.process for j, o in enumerate(workers) if j != i and hasattr(o, "process")]
                        _wait_quiet(others)
                        before = _cpu_seconds(others)
                        warm = spec.warmup if rnd == 0 else max(1, spec.warmup // 5)
                        if w.info.get("task") == CAUSAL_TASK:  # whole generations: warm up once per slice
                            got = w.run_causal(b, s, spec.causal_warmup, spec.causal_iters_per_round, spec.new_tokens)
                            slot = times.setdefault((i, b, s), {"prefill_ms": [], "decode_ms": []})
                            for key in slot:
                                slot[key].extend(got[key])
                        else:
                            times.setdefault((i, b, s), []).extend(w.run(b, s, warm, per_round))
                        idle_cpu[(i, b, s)] = idle_cpu.get((i, b, s), 0.0) + _cpu_seconds(others) - before
                        done += 1
                        if on_progress:
                            on_progress(done, total)
            for i, w in enumerate(workers):
                placement = w.placement(spec.batch_sizes[0], spec.seq_lens[0])
                memory = w.peak_memory() if w.info.get("task") == CAUSAL_TASK else {}
                for b, s in shapes:
                    row = {"model": labels[i], "backend": w.info["backend"], "device": device,
                           "providers": w.info["providers"], "nodes_per_provider": placement,
                           "batch_size": b, "seq_len": s, "threads": threads,
                           "wait_policy": policy_record(w.info, spec.wait_policy),
                           "idle_cpu_ms": round(1000 * idle_cpu.get((i, b, s), 0.0), 1)}
                    if w.info.get("task") == CAUSAL_TASK:
                        row.update(causal_figures(times[(i, b, s)], b, s, spec.new_tokens), **memory)
                    else:
                        row.update(percentiles(times[(i, b, s)], b))
                    if device == "cuda" and placement and set(placement) - {"CUDAExecutionProvider"}:
                        row["warning"] = f"nodes fell back off CUDA: {placement}"
                    results.append(row)
        finally:
            for w in workers:
                if hasattr(w, "close"):
                    w.close()
    return {"environment": environment(threads), "spec": spec.model_dump(), "results": results}

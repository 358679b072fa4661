"""The single latency protocol of the project.

Fixed threads (default: physical cores), warm-up then timed runs, p50/p90/p99 and throughput, for each batch
size x sequence length, on CPU (and CUDA when present). Each model runs in its own worker process and the
workers are driven round-robin, a slice of iterations each per round: several ONNX Runtime sessions and torch
in one process on few cores spin idle threads and ruin the numbers (shared/notes/minilm-sst2-reference.md).
On CUDA, inputs live on the device on both sides (IOBinding for ORT) and torch is synchronized before reading
the clock, so copies count the same.

Every figure is a median over the runs of all rounds, with a 95% interval over rounds (`timing`: a bootstrap of
whole rounds, fixed seed) and its value in each round (paired across models: `timing.ratio_ci`). The load average
and CPU steal are read around each round (`busy`), and peak memory is read in each worker (`memory`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from compress.evaluation.latency.busy import Watch
from compress.evaluation.latency.environment import environment, physical_cores, policy_record
from compress.evaluation.latency.timing import causal_figures, latency_figures
from compress.evaluation.latency.workers import (
    _cpu_seconds,
    _ProcessWorker,
    _wait_quiet,
    fresh_memory,
    local_worker,
)
from compress.models.causal import CAUSAL_TASK


class BenchSpec(BaseModel):
    """How latency is measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_sizes: list[int] = Field([1, 8], description="Batch sizes to time.")
    seq_lens: list[int] = Field([128], description="Sequence lengths to time (text models); every token is real.")
    devices: list[str] = Field(["cpu"], description="Devices: cpu, cuda ('cuda' is skipped when no GPU is present).")
    threads: int | None = Field(None, ge=1, description="Intra-op threads; default = physical cores.")
    warmup: int = Field(10, ge=0, description="Untimed runs before timing, per shape and worker.")
    iters: int = Field(60, ge=1, description="Timed runs per shape in total (split across rounds).")
    rounds: int = Field(5, ge=1, description="Round-robin rounds across models (interleaving evens out drift). Each "
                        "figure gets a 95% interval over rounds: 5 or more for one worth reading, 1 gives none.")
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
    decoder_loop: Literal["auto", "generator", "runner"] = Field(
        "auto", description="Causal LMs in ONNX: the decode loop timed. generator = onnxruntime-genai's Generator (no "
        "per-token Python; fused folders with genai_config.json, CPU, batch 1: what users of that graph run); runner "
        "= compress's CausalRunner (I/O binding; any graph, batch, device); auto = generator where it applies "
        "(CPU, batch sizes [1], a fused folder, onnxruntime-genai installed), else runner.")
    busy: Literal["refuse", "mark", "ignore"] = Field(
        "mark", description="What to do when the machine is busy (1-minute load average above the bench's threads + "
        "0.5, or CPU steal above 5%, before the bench or in a round): refuse = stop with an error; mark = time anyway "
        "and flag the result (busy: true, busy_reason); ignore = only record the readings.")


def bench(models: list[str], spec: BenchSpec | None = None, *, labels: list[str] | None = None,
          load_kwargs: dict | None = None, on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Time each model for every device x batch size x sequence length, interleaved round-robin.

    Args:
        models: model sources (anything `load_model` takes).
        spec: the protocol settings.
        labels: display names (default: the sources).
        load_kwargs: extra `load_model` arguments for every model (e.g. task, num_labels).
        on_progress: called with (done, total) after each timed slice.

    Returns: {"environment": {...}, "spec": {...}, "busy": bool, "busy_reason": str | None,
              "results": [{model, backend, device, provider(s), nodes_per_provider, batch_size, seq_len, p50_ms,
              p50_ms_ci95, p50_ms_rounds, p90_ms, p99_ms, throughput_per_s, rounds, peak_rss_mb, load_rss_mb, ...}]}
              (decoders add decode/prefill tokens/s and TTFT, each with `_ci95` and `_rounds`; see `timing`).
    """
    from compress.runtime.ort import cuda_available

    spec = spec or BenchSpec()
    threads = spec.threads or physical_cores()
    labels = labels or list(models)
    devices = [d for d in spec.devices if d == "cpu" or (d == "cuda" and cuda_available())]
    shapes = [(b, s) for b in spec.batch_sizes for s in spec.seq_lens]
    watch = Watch(threads, spec.busy)  # under `refuse`, a busy machine stops us before any model loads
    results, policies = [], {}
    progress = _Progress(len(devices) * spec.rounds * len(shapes) * len(models), on_progress)
    for device in devices:
        loop = decoder_loop(spec, device)
        if spec.isolate:
            workers = [_ProcessWorker(m, device, threads, load_kwargs, spec.wait_policy, loop) for m in models]
        else:
            workers = [local_worker(m, device, threads, load_kwargs, loop=loop) for m in models]
        try:
            times, idle_cpu = _rounds(workers, spec, shapes, device, watch, progress)
            for i, w in enumerate(workers):
                memory = w.peak_memory()  # before `placement`: its profiling session would count in the peak
                if memory.get("rss_method") is None:  # in-process, and this process's peak cannot be reset
                    memory = fresh_memory(models[i], device, threads, load_kwargs, spec.wait_policy, shapes,
                                          spec.new_tokens, loop)
                placement = w.placement(spec.batch_sizes[0], spec.seq_lens[0])
                policies[w.info["backend"]] = policy_record(w.info, spec.wait_policy)
                for b, s in shapes:
                    if (i, b, s) not in times:  # a shape this runtime does not serve (peers: batch 1 only)
                        continue
                    row = {"model": labels[i], "backend": w.info["backend"], "device": device,
                           "providers": w.info["providers"], "nodes_per_provider": placement,
                           "batch_size": b, "seq_len": s, "threads": threads,
                           "wait_policy": policy_record(w.info, spec.wait_policy),
                           "idle_cpu_ms": round(1000 * idle_cpu.get((i, b, s), 0.0), 1)}
                    if w.info.get("loop"):
                        row["loop"] = w.info["loop"]
                    if "attn_implementation" in w.info:
                        row["attn_implementation"] = w.info["attn_implementation"]
                    if w.info.get("task") == CAUSAL_TASK:
                        row.update(causal_figures(times[(i, b, s)], b, s, spec.new_tokens))
                    else:
                        row.update(latency_figures(times[(i, b, s)], b))
                    row.update(memory)
                    if device == "cuda" and placement and set(placement) - {"CUDAExecutionProvider"}:
                        row["warning"] = f"nodes fell back off CUDA: {placement}"
                    results.append(row)
        finally:
            for w in workers:
                if hasattr(w, "close"):
                    w.close()
    load = watch.summary()
    env = environment(threads, wait_policies=policies, load_before=load.pop("load_before"),
                      load_after=load.pop("load_after"))
    env.update(load)
    return {"environment": env, "spec": spec.model_dump(), "busy": env["busy"], "busy_reason": env["busy_reason"],
            "results": results}


def decoder_loop(spec: BenchSpec, device: str) -> str:
    """The decode loop the workers on `device` use (see `BenchSpec.decoder_loop`): "generator" or "runner"."""
    if spec.decoder_loop != "auto":
        return spec.decoder_loop
    return "generator" if device == "cpu" and list(spec.batch_sizes) == [1] else "runner"


class _Progress:
    def __init__(self, total: int, callback: Callable[[int, int], None] | None):
        self.done, self.total, self.callback = 0, total, callback

    def step(self) -> None:
        self.done += 1
        if self.callback:
            self.callback(self.done, self.total)


def _rounds(workers: list, spec: BenchSpec, shapes: list[tuple[int, int]], device: str, watch: Watch,
            progress: _Progress) -> tuple[dict, dict]:
    """The timed rounds on one device: each round gives every model a slice of every shape, in turn.

    Returns: (times, idle_cpu): times[(i, b, s)] = the runs of model i per round, `[[ms, ...], ...]` (decoders:
    {"prefill_ms": [[...], ...], "decode_ms": [[...], ...]}); idle_cpu[(i, b, s)] = CPU seconds the other workers
    used while model i was timed.
    """
    per_round = max(1, spec.iters // spec.rounds)
    times: dict = {}
    idle_cpu: dict = {}
    for rnd in range(spec.rounds):
        with watch.round(device, rnd):  # load average and steal before and after the round
            for b, s in shapes:
                for i, w in enumerate(workers):  # round-robin: every model gets a slice each round
                    if b > w.info.get("max_batch", b):
                        continue
                    others = [o.process for j, o in enumerate(workers) if j != i and hasattr(o, "process")]
                    _wait_quiet(others)
                    before = _cpu_seconds(others)
                    warm = spec.warmup if rnd == 0 else max(1, spec.warmup // 5)
                    if w.info.get("task") == CAUSAL_TASK:  # whole generations: warm up once per slice
                        got = w.run_causal(b, s, spec.causal_warmup, spec.causal_iters_per_round, spec.new_tokens)
                        slot = times.setdefault((i, b, s), {"prefill_ms": [], "decode_ms": []})
                        for key in slot:
                            slot[key].append(got[key])
                    else:
                        times.setdefault((i, b, s), []).append(w.run(b, s, warm, per_round))
                    idle_cpu[(i, b, s)] = idle_cpu.get((i, b, s), 0.0) + _cpu_seconds(others) - before
                    progress.step()
    return times, idle_cpu

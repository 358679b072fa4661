"""The single latency protocol of the project.

Fixed threads (default: physical cores), warm-up then timed runs, p50/p90/p99 and throughput, for each batch
size x sequence length, on CPU (and CUDA when present). Each model runs in its own worker process and the
workers are driven round-robin, a slice of iterations each per round: several ONNX Runtime sessions and torch
in one process on few cores spin idle threads and ruin the numbers (shared/notes/minilm-sst2-reference.md).
On CUDA, inputs live on the device on both sides (IOBinding for ORT) and torch is synchronized before reading
the clock, so copies count the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from compress.evaluation.latency.environment import environment, physical_cores, policy_record
from compress.evaluation.latency.timing import causal_figures, percentiles
from compress.evaluation.latency.workers import _cpu_seconds, _LocalWorker, _ProcessWorker, _wait_quiet
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


# --- wait policies: each worker as its runtime's users run it ------------------------------------------------


# --- workers -------------------------------------------------------------------------------------------------


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
    from compress.runtime.ort import cuda_available

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

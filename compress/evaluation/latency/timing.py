"""Timing primitives: warm-up then timed runs, percentiles, decoder figures."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


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

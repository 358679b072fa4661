"""Timing primitives: warm-up then timed runs, percentiles, decoder figures, and their intervals over rounds.

Intervals. A bench times every model in interleaved rounds (see `bench`); the runs of one round share the machine's
state of that moment (clock, caches, neighbours), so the unit of replication is the round, not the run. Each figure
(a median of all runs) comes with its value in each round and a distribution-free 95% interval of the median over
rounds: the order-statistic interval from the binomial (`median_ci`), [k-th smallest, k-th largest] of the per-round
values with the largest k whose coverage P(k <= Binomial(n, 1/2) <= n - k) is at least 95%. It needs no assumption
about the shape of the timing distribution, only that rounds are alike and independent, and it is deterministic.
Six rounds reach 95% (96.9%); with 5 (the default) the widest interval, [min, max] of the rounds, covers 93.75%, and
fewer rounds cover less (4: 87.5%, 2: 50%); `ci_coverage` in each row says what the interval achieves. One round has
no interval (None).

Ratios of two models timed in the same rounds (`ratio_ci`) are paired by round and bootstrapped over rounds
(`ROUND_RESAMPLES` resamples, fixed seed `SEED`: the same timings always give the same interval).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from compress.core.stats import median_ci, order_interval, ratio_ci  # noqa: F401  (ratio_ci: re-exported)


def percentiles(times_ms: list[float], batch_size: int) -> dict:
    """p50/p90/p99 in ms and throughput in samples per second (from the median)."""
    t = np.asarray(times_ms)
    p50 = float(np.percentile(t, 50))
    return {"p50_ms": round(p50, 3), "p90_ms": round(float(np.percentile(t, 90)), 3),
            "p99_ms": round(float(np.percentile(t, 99)), 3), "mean_ms": round(float(t.mean()), 3),
            "throughput_per_s": round(1000.0 * batch_size / p50, 2), "runs": int(len(t))}


def _rounds_of(samples) -> list[list[float]]:
    """Per-round runs; a flat list of runs counts as one round."""
    samples = list(samples)
    if samples and not isinstance(samples[0], (list, tuple, np.ndarray)):
        return [samples]
    return [list(r) for r in samples if len(r)]


def _ms(x: float) -> float:
    return round(float(x), 3)


def _per_s(units: float, ms: float) -> float:
    return round(1000.0 * units / ms, 2)


def _ms_figure(name: str, round_medians: list[float]) -> dict:
    """`<name>_rounds` and `<name>_ci95` of a figure in ms."""
    ci = median_ci(round_medians)
    return {f"{name}_rounds": [_ms(m) for m in round_medians], f"{name}_ci95": [_ms(ci[0]), _ms(ci[1])] if ci else None}


def _rate_figure(name: str, units: float, round_medians: list[float]) -> dict:
    """The same for a rate (units per second from the median ms): decreasing in the ms, so the ends swap."""
    ci = median_ci(round_medians)
    return {f"{name}_rounds": [_per_s(units, m) for m in round_medians],
            f"{name}_ci95": [_per_s(units, ci[1]), _per_s(units, ci[0])] if ci else None}


def _coverage(n: int) -> float | None:
    found = order_interval(n)
    return round(found[1], 4) if found else None


def latency_figures(rounds_ms, batch_size: int) -> dict:
    """Classifier figures from per-round runs: `percentiles` of all runs, plus `rounds` (how many), `p50_ms_rounds`
    (the median of each round), `p50_ms_ci95` ([lo, hi] over rounds, or None) and `ci_coverage`."""
    rounds = _rounds_of(rounds_ms)
    out = percentiles([t for r in rounds for t in r], batch_size)
    medians = [float(np.median(r)) for r in rounds]
    out.update(rounds=len(rounds), ci_coverage=_coverage(len(rounds)), **_ms_figure("p50_ms", medians))
    return out


def causal_figures(samples: dict, batch_size: int, prompt_len: int, new_tokens: int) -> dict:
    """Decoder figures from per-round samples (`{"prefill_ms": [[...] per round], "decode_ms": [[...] per round]}`;
    flat lists count as one round). `p50_ms` is the median decode step (ms per generated token at this batch), so
    speedups of causal stages are decode speedups. Each of `p50_ms`, `decode_tokens_per_s`, `prefill_tokens_per_s`
    and `ttft_ms` comes with `<figure>_rounds` (its value in each round) and `<figure>_ci95` ([lo, hi] or None)."""
    decode_rounds, prefill_rounds = _rounds_of(samples["decode_ms"]), _rounds_of(samples["prefill_ms"])
    decode = percentiles([t for r in decode_rounds for t in r], batch_size)  # per generated token
    prefill = percentiles([t for r in prefill_rounds for t in r], batch_size * prompt_len)  # per prompt
    step = [float(np.median(r)) for r in decode_rounds]  # ms per decode step, per round
    first = [float(np.median(r)) for r in prefill_rounds]  # ms to the first token, per round
    return {**decode, "decode_tokens_per_s": decode["throughput_per_s"],
            "prefill_tokens_per_s": prefill["throughput_per_s"], "ttft_ms": prefill["p50_ms"],
            "ttft_p90_ms": prefill["p90_ms"], "new_tokens": new_tokens, "rounds": len(decode_rounds),
            "ci_coverage": _coverage(len(decode_rounds)), **_ms_figure("p50_ms", step),
            **_rate_figure("decode_tokens_per_s", batch_size, step),
            **_rate_figure("prefill_tokens_per_s", batch_size * prompt_len, first), **_ms_figure("ttft_ms", first)}


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

"""Statistics shared by the bench and the report: distribution-free intervals of a median over rounds, paired ratios,
paired accuracy differences."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ROUND_RESAMPLES = 2000  # bootstrap resamples of the rounds (the 2.5% / 97.5% quantiles settle well before this)


SEED = 0  # fixed: the same timings always give the same interval


def order_interval(n: int, confidence: float = 0.95) -> tuple[int, float] | None:
    """The order statistics of a distribution-free interval of the median of n values: (k, coverage) such that
    [k-th smallest, k-th largest] covers the median with probability `coverage` = P(k <= Binomial(n, 1/2) <= n - k),
    the largest k whose coverage reaches `confidence`; k = 1 ([min, max]) when none does. None below 2 values."""
    if n < 2:
        return None

    def coverage(k: int) -> float:
        return sum(math.comb(n, j) for j in range(k, n - k + 1)) / 2.0**n

    k = 1
    while k + 1 <= n // 2 and coverage(k + 1) >= confidence:
        k += 1
    return k, coverage(k)


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float] | None:
    """Distribution-free interval of the median of per-round values (order statistics, binomial coverage).

    Args:
        values: one figure per round, e.g. the median latency of each round (ms).
        confidence: the coverage wanted; reached from 6 values on (see `order_interval`).

    Returns: (lo, hi, coverage achieved), or None with fewer than two values.
    """
    x = np.sort(np.asarray(values, dtype=float))
    found = order_interval(len(x), confidence)
    if found is None:
        return None
    k, cover = found
    return float(x[k - 1]), float(x[len(x) - k]), cover


def ratio_ci(numerator_rounds: Sequence[float], denominator_rounds: Sequence[float],
             confidence: float = 0.95) -> tuple[float, float, float]:
    """A speed ratio of two models timed in the same interleaved rounds, with its interval (paired by round).

    Round r of both models ran back to back, so drift of the machine moves both; the ratio is taken within each
    round first (`num[r] / den[r]`), and the figure is the median of these per-round ratios. The interval is a
    percentile bootstrap over rounds (the same resampled rounds for both models; fixed seed).
    E.g. speedup over the teacher = `ratio_ci(teacher["p50_ms_rounds"], stage["p50_ms_rounds"])`, or for decoders
    `ratio_ci(stage["decode_tokens_per_s_rounds"], teacher["decode_tokens_per_s_rounds"])`.

    Args:
        numerator_rounds: the per-round figure of the first model (one value per round).
        denominator_rounds: the same figure of the second model, same rounds in the same order.
        confidence: coverage of the interval.

    Returns: (ratio, lo, hi); lo and hi are NaN with a single round (no interval).
    """
    num, den = np.asarray(numerator_rounds, dtype=float), np.asarray(denominator_rounds, dtype=float)
    if len(num) != len(den) or len(num) == 0:
        raise ValueError(f"ratio_ci needs the same rounds on both sides (got {len(num)} and {len(den)} values)")
    if np.any(den <= 0) or np.any(num <= 0):
        raise ValueError("ratio_ci needs positive per-round figures")
    ratios = num / den  # (R,): paired within each round
    ratio = float(np.median(ratios))
    if len(ratios) < 2:
        return ratio, float("nan"), float("nan")
    rng = np.random.default_rng(SEED)
    picks = rng.integers(0, len(ratios), (ROUND_RESAMPLES, len(ratios)))
    medians = np.median(ratios[picks], axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(medians, [alpha / 2, 1 - alpha / 2])
    return ratio, float(lo), float(hi)


EXAMPLE_RESAMPLES = 2000  # bootstrap resamples of the examples of a task


def paired_difference_ci(reference_correct: Sequence[int], stage_correct: Sequence[int],
                         confidence: float = 0.95) -> tuple[float, float, float]:
    """Accuracy drop of a model against a reference scored on the same examples, with its interval (paired by example).

    Two models that answer most examples alike differ far less than two independent accuracies' intervals suggest:
    the interval resamples examples (the same picks for both; percentile bootstrap, fixed seed).

    Args:
        reference_correct: 1/0 per example for the reference (e.g. the teacher).
        stage_correct: 1/0 per example for the model compared, same examples in the same order.
        confidence: coverage of the interval.

    Returns: (drop, lo, hi) as fractions: reference accuracy minus model accuracy (positive = the model is worse).
    """
    ref, mine = np.asarray(reference_correct, dtype=float), np.asarray(stage_correct, dtype=float)
    if len(ref) != len(mine) or len(ref) == 0:
        raise ValueError(f"paired_difference_ci needs the same examples on both sides (got {len(ref)} and {len(mine)})")
    diff = ref - mine
    rng = np.random.default_rng(SEED)
    means = diff[rng.integers(0, len(diff), (EXAMPLE_RESAMPLES, len(diff)))].mean(axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(diff.mean()), float(lo), float(hi)

"""Intervals over rounds: the median's order-statistic interval, per-round figures, and paired speed ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compress.evaluation.latency.timing import causal_figures, latency_figures, median_ci, ratio_ci


def _drifting_rounds(seed: int, rounds: int = 5, runs: int = 12, drift: float = 0.1) -> list[list[float]]:
    """Runs around 10 ms whose level moves from round to round (the machine drifts), with run-to-run noise."""
    rng = np.random.default_rng(seed)
    levels = 10.0 * (1 + drift * rng.standard_normal(rounds))
    return [list(level + 0.2 * rng.standard_normal(runs)) for level in levels]


def test_order_interval_coverage_is_the_binomial():
    from compress.evaluation.latency.timing import order_interval

    # assert: [min, max] of 5 rounds covers 1 - 2/2^5; 6 rounds are the fewest to reach 95%; 9 rounds drop one
    # value at each end (P(2 <= B(9, 1/2) <= 7) = 0.961), 20 rounds drop five (0.959)
    assert order_interval(5) == (1, pytest.approx(0.9375))
    assert order_interval(6) == (1, pytest.approx(0.96875))
    assert order_interval(9) == (2, pytest.approx(1 - 2 * (1 + 9) / 512))
    assert order_interval(20)[0] == 6 and order_interval(20)[1] >= 0.95
    assert order_interval(1) is None and order_interval(2) == (1, 0.5)


def test_median_ci_is_order_statistics_of_the_rounds():
    # setup: 9 rounds, shuffled
    values = [5.0, 9.0, 1.0, 7.0, 3.0, 8.0, 2.0, 6.0, 4.0]
    # execute
    lo, hi, coverage = median_ci(values)
    # assert: the 2nd smallest and 2nd largest; [min, max] for 5 rounds; nothing for one
    assert (lo, hi) == (2.0, 8.0) and coverage >= 0.95
    assert median_ci([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0, pytest.approx(0.9375))
    assert median_ci([1.0]) is None and median_ci([]) is None


def test_median_ci_covers_the_median_as_promised_when_rounds_drift():
    # setup: 400 benches of 6 rounds whose level drifts between rounds (true median 10 ms)
    hits = 0
    for seed in range(400):
        rounds = _drifting_rounds(1000 + seed, rounds=6)
        lo, hi, _ = median_ci([np.median(r) for r in rounds])
        hits += lo <= 10.0 <= hi
    # assert: about 96.9% (binomial), well within the sampling error of 400 trials
    assert hits / 400 >= 0.93


def test_latency_figures_keep_the_old_keys_and_add_rounds_and_interval():
    # setup
    rounds = _drifting_rounds(2)
    # execute
    fig = latency_figures(rounds, batch_size=2)
    # assert: p50 of all runs as before, plus its interval and the median of each round
    pooled = np.concatenate(rounds)
    assert fig["p50_ms"] == pytest.approx(np.median(pooled), abs=1e-3) and fig["runs"] == 60
    assert fig["throughput_per_s"] == pytest.approx(2000 / fig["p50_ms"], rel=1e-3)
    assert fig["rounds"] == 5 and len(fig["p50_ms_rounds"]) == 5 and fig["ci_coverage"] == 0.9375
    lo, hi = fig["p50_ms_ci95"]
    assert lo <= fig["p50_ms"] <= hi
    assert (lo, hi) == (min(fig["p50_ms_rounds"]), max(fig["p50_ms_rounds"]))  # 5 rounds: [min, max] of rounds
    assert latency_figures([[1.0, 2.0]], 1)["p50_ms_ci95"] is None  # one round: no interval
    assert latency_figures([1.0, 2.0, 3.0], 1)["rounds"] == 1  # a flat list is one round


def test_causal_figures_give_every_decoder_figure_an_interval():
    # setup: 5 rounds of 3 generations, prompt of 16 tokens, batch 2
    decode, prefill = _drifting_rounds(3, runs=3), [[5 * t for t in r] for r in _drifting_rounds(4, runs=3)]
    # execute
    fig = causal_figures({"decode_ms": decode, "prefill_ms": prefill}, batch_size=2, prompt_len=16, new_tokens=8)
    # assert: each figure inside its interval; tokens/s from the median ms (the interval's ends swap)
    for key in ("p50_ms", "decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms"):
        lo, hi = fig[f"{key}_ci95"]
        assert lo <= fig[key] <= hi and len(fig[f"{key}_rounds"]) == 5, key
    assert fig["decode_tokens_per_s"] == pytest.approx(2000 / fig["p50_ms"], rel=1e-3)
    assert fig["decode_tokens_per_s_ci95"][0] == pytest.approx(2000 / fig["p50_ms_ci95"][1], rel=1e-3)
    assert fig["prefill_tokens_per_s"] == pytest.approx(1000 * 32 / fig["ttft_ms"], rel=1e-3)
    assert fig["rounds"] == 5 and fig["runs"] == 15 and fig["new_tokens"] == 8


def test_ratio_ci_pairs_rounds_so_shared_drift_cancels():
    # setup: a teacher whose rounds drift by +-30%, and a student exactly twice as fast in every round
    teacher = [10.0, 13.0, 7.0, 12.0, 9.0]
    student = [t / 2 for t in teacher]
    # execute
    ratio, lo, hi = ratio_ci(teacher, student)
    shuffled = ratio_ci(teacher, [student[i] for i in (2, 0, 4, 1, 3)])  # the same values, pairing broken
    # assert: paired by round the ratio is exactly 2 with no spread; unpaired, the drift shows as a wide interval
    assert (ratio, lo, hi) == (2.0, 2.0, 2.0)
    assert shuffled[2] - shuffled[1] > 0.5
    assert ratio_ci(teacher, student) == (ratio, lo, hi)  # fixed seed


def test_ratio_ci_interval_brackets_the_ratio_and_rejects_bad_input():
    # setup
    rng = np.random.default_rng(5)
    num = 10 * (1 + 0.1 * rng.standard_normal(7))
    den = num / (1.5 * (1 + 0.05 * rng.standard_normal(7)))
    # execute
    ratio, lo, hi = ratio_ci(list(num), list(den))
    # assert
    assert lo <= ratio <= hi and 1.3 < ratio < 1.7
    single = ratio_ci([4.0], [2.0])
    assert single[0] == 2.0 and math.isnan(single[1]) and math.isnan(single[2])
    with pytest.raises(ValueError, match="same rounds"):
        ratio_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        ratio_ci([1.0, 2.0], [1.0, 0.0])

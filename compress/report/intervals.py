"""Intervals and verdicts in the report: a speedup's 95% interval from per-round timings, whether it reaches across
a goal, and how a figure, its interval and a verdict are written."""

from __future__ import annotations


def speedup_ci(ref_row: dict | None, row: dict | None) -> list[float] | None:
    """95% interval of the speedup `ref_row` p50 / `row` p50 when both were timed in the same rounds."""
    from compress.core.stats import ratio_ci

    a, b = (ref_row or {}).get("p50_ms_rounds"), (row or {}).get("p50_ms_rounds")
    if not a or not b or len(a) != len(b) or len(a) < 2:
        return None
    _, lo, hi = ratio_ci(a, b)
    return [round(lo, 3), round(hi, 3)]


def crosses(interval: list[float] | None, goal: float | None) -> list[str]:
    """["speedup"] when the speedup's interval reaches across its goal (the verdict could go either way)."""
    return ["speedup"] if interval and goal is not None and interval[0] < goal <= interval[1] else []


def verdict(stage: dict) -> str:
    """`perplexity ok speedup MISS`, with `(CI crosses goal)` after a verdict whose interval reaches across its goal."""
    v = stage.get("verdicts") or {}
    if not v:
        return "-"
    unsure = set(stage.get("uncertain") or [])
    return " ".join(f"{k} {'ok' if ok else ('-' if ok is None else 'MISS')}{' (CI crosses goal)' if k in unsure else ''}"
                    for k, ok in v.items())


def with_ci(value, ci, fmt: str = "{:.2f}", unit: str = "") -> str:
    """`1.90x [1.62-2.10]`: a figure and its 95% interval (the figure alone when no interval was measured)."""
    if value is None:
        return "-"
    text = fmt.format(value) + unit
    return text if not ci else f"{text} [{fmt.format(ci[0])}-{fmt.format(ci[1])}]"

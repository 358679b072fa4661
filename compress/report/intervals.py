"""Intervals in the report: a speedup's 95% interval from per-round timings, and whether it reaches across a goal."""

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

"""Intervals and verdicts in the report: a speedup's 95% interval from per-round timings, whether it reaches across
a goal, and how a figure, its interval and a verdict are written."""

from __future__ import annotations

import re

# A sign before a figure that is all zeros (`-0.00`, `+0.0000x`, `-0`): what -0.0 and tiny values round to.
_SIGNED_ZERO = re.compile(r"^[+-](?=0+(?:\.0+)?(?![0-9.]))")


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


def number(value, fmt: str = "{:.2f}", unit: str = "") -> str:
    """`fmt.format(value)` and `unit`, `-` for None; a figure that rounds to zero is written without a sign
    (`0.00`, never `-0.00` or `+0.00`): -0.0 and -1e-7 are no loss, and a teacher's Δ against itself is plain 0."""
    if value is None:
        return "-"
    return _SIGNED_ZERO.sub("", fmt.format(value)) + unit


def with_ci(value, ci, fmt: str = "{:.2f}", unit: str = "") -> str:
    """`1.90x [1.62-2.10]`: a figure and its 95% interval (the figure alone when no interval was measured)."""
    if value is None:
        return "-"
    text = number(value, fmt, unit)
    return text if not ci else f"{text} [{number(ci[0], fmt)}-{number(ci[1], fmt)}]"

"""From measured results to a comparison: deltas and speedups against the teacher, the Pareto front, goal
verdicts, the best stage and the closing note. Pure data in, data out (idempotent: `compress report` reruns it)."""

from __future__ import annotations

import copy

from compress.report import causal
from compress.report.intervals import crosses, number, speedup_ci


def primary_row(stage: dict, primary: dict | None) -> dict | None:
    """The latency row at the headline shape (device, batch size, sequence length), else the first row."""
    rows = stage.get("latency") or []
    if not rows:
        return None
    if primary:
        for row in rows:
            if (row["device"], row["batch_size"], row["seq_len"]) == (primary["device"], primary["batch_size"],
                                                                       primary["seq_len"]):
                return row
    return rows[0]


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (latency, accuracy) points: True where no other point is at least as fast and as accurate, and
    strictly better in one of the two."""
    flags = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(lat2 <= lat and acc2 >= acc and (lat2 < lat or acc2 > acc)
                        for j, (lat2, acc2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def build(results: dict) -> dict:
    """Return a copy of `results` with derived fields on every stage and a `summary`.

    Per stage: `accuracy_drop` (teacher minus stage, a fraction), `p50_ms` (headline shape), `speedup` (reference
    p50 / stage p50), `size_ratio` (teacher size / stage size), `pareto`, `verdicts` ({goal: True/False/None})
    and `meets_goals`; per latency row: `speedup_vs_teacher` (same device and shape, any backend).
    """
    if causal.is_causal_results(results):
        return causal.build(results)
    out = copy.deepcopy(results)
    stages = out["stages"]
    teacher = stages[0]
    goals = out.get("goals") or {}
    primary = out.get("primary")
    by_name = {s["name"]: s for s in stages}
    ref_name = goals.get("speedup_vs") or "teacher"
    ref = by_name.get(ref_name, teacher) if ref_name != "teacher" else teacher
    ref_row = primary_row(ref, primary)
    teacher_rows = {(r["device"], r["batch_size"], r["seq_len"]): r for r in teacher.get("latency", [])
                    if r["backend"] == teacher.get("backend", r["backend"])}
    for s in stages:
        acc, t_acc = s.get("accuracy"), teacher.get("accuracy")
        s["accuracy_drop"] = None if acc is None or t_acc is None else round(t_acc - acc, 6)
        row = primary_row(s, primary)
        s["p50_ms"] = row["p50_ms"] if row else None
        s["speedup"] = round(ref_row["p50_ms"] / row["p50_ms"], 3) if row and ref_row else None
        s["speedup_ci95"] = speedup_ci(ref_row, row)
        s["size_ratio"] = round(teacher["size_mb"] / s["size_mb"], 3) if s.get("size_mb") else None
        for r in s.get("latency", []):
            t = teacher_rows.get((r["device"], r["batch_size"], r["seq_len"]))
            r["speedup_vs_teacher"] = round(t["p50_ms"] / r["p50_ms"], 3) if t else None
        verdicts = {}
        if s is teacher:
            goals_here = {}  # the reference gets no verdict
        else:
            goals_here = goals
        if goals_here.get("max_accuracy_drop") is not None:
            verdicts["accuracy"] = None if s["accuracy_drop"] is None else s["accuracy_drop"] <= goals["max_accuracy_drop"] + 1e-12
        if goals_here.get("min_speedup") is not None:
            verdicts["speedup"] = None if s["speedup"] is None else s["speedup"] >= goals["min_speedup"]
        s["uncertain"] = crosses(s.get("speedup_ci95"), goals_here.get("min_speedup"))
        s["verdicts"] = verdicts
        s["meets_goals"] = all(v is True for v in verdicts.values()) if verdicts else None
    measured = [s for s in stages if s.get("accuracy") is not None and s.get("p50_ms")]
    for s, flag in zip(measured, pareto_front([(s["p50_ms"], s["accuracy"]) for s in measured]), strict=False):
        s["pareto"] = flag
    out["summary"] = summarize(out)
    return out


def best_stage(results: dict) -> dict | None:
    """The stage the closing note is about: among stages that are neither the teacher nor a baseline, the fastest
    that meets every goal; else the fastest that meets the accuracy goal; else the most accurate."""
    candidates = [s for s in results["stages"][1:] if not s.get("is_baseline") and s.get("accuracy") is not None]
    if not candidates:
        return None
    timed = [s for s in candidates if s.get("p50_ms")]
    for ok in (lambda s: s.get("meets_goals") is True,
               lambda s: s.get("verdicts", {}).get("accuracy") is True):
        pool = [s for s in timed if ok(s)]
        if pool:
            return min(pool, key=lambda s: s["p50_ms"])
    if not results.get("goals") and timed:
        # No goals: the fastest stage on the Pareto front (the accuracy/latency trade-off is the reader's call).
        front = [s for s in timed if s.get("pareto")] or timed
        return min(front, key=lambda s: s["p50_ms"])
    return max(candidates, key=lambda s: s["accuracy"])


def compare(best: dict, other: dict) -> dict:
    """Speedup (other p50 / best p50 at the headline shape) and accuracy drop (other minus best) of `best`."""
    speedup = round(other["p50_ms"] / best["p50_ms"], 3) if best.get("p50_ms") and other.get("p50_ms") else None
    drop = None
    if best.get("accuracy") is not None and other.get("accuracy") is not None:
        drop = round(other["accuracy"] - best["accuracy"], 6)
    return {"vs": other["name"], "speedup": speedup, "accuracy_drop": drop, "size_ratio":
            round(other["size_mb"] / best["size_mb"], 3) if best.get("size_mb") else None}


def summarize(results: dict) -> dict:
    """Best stage, its comparison with the teacher and each baseline, goal verdict counts, and a closing note."""
    stages = results["stages"]
    best = best_stage(results)
    summary: dict = {"best": best["name"] if best else None, "comparisons": [], "pareto": [
        s["name"] for s in stages if s.get("pareto")]}
    if best is None:
        summary["note"] = "No compressed stage was evaluated."
        return summary
    others = [stages[0]] + [s for s in stages if s.get("is_baseline")]
    summary["comparisons"] = [compare(best, o) for o in others]
    shape = results.get("primary") or {}
    where = f"{shape.get('device', 'cpu')}, batch {shape.get('batch_size')}, seq {shape.get('seq_len')}" if shape else ""
    parts = []
    for c in summary["comparisons"]:
        other = next(s for s in stages if s["name"] == c["vs"])
        speed = f"{c['speedup']:.2f}x faster" if c["speedup"] else "latency not measured"
        if c["speedup"] and c["speedup"] < 1:
            speed = f"{1 / c['speedup']:.2f}x slower"
        acc = ""
        if c["accuracy_drop"] is not None:
            delta = number(-100 * c["accuracy_drop"], "{:+.2f}")
            acc = f", accuracy {100 * best['accuracy']:.2f}% vs {100 * other['accuracy']:.2f}% ({delta} pt)"
        label = f"the teacher `{c['vs']}` ({other.get('backend')})" if other is stages[0] else f"`{c['vs']}`"
        parts.append(f"{speed} than {label}{acc}, {c['size_ratio']:.1f}x smaller" if c["size_ratio"] else
                     f"{speed} than {label}{acc}")
    verdict = ""
    if best.get("verdicts"):
        verdict = " It meets every goal." if best.get("meets_goals") else " It misses a goal (see Goals)."
    summary["note"] = (f"Best stage `{best['name']}` ({best.get('backend')}"
                       f"{', ' + where if where else ''}): " + "; ".join(parts) + "." + verdict)
    return summary

"""Report plots as PNG bytes (matplotlib, headless): accuracy vs latency with the Pareto front, size per stage,
speedup and accuracy drop against the goals, and per-layer tables (sparsity / rank / sensitivity) from pass
metrics. Each function takes built results (see `report.build`) and returns None when it has nothing to draw."""

from __future__ import annotations

import io
import numbers

COLORS = {"teacher": "#444444", "baseline": "#d62728", "stage": "#1f77b4", "best": "#2ca02c"}
MAX_BARS = 48


def _figure(width: float = 7.5, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _color(results: dict, stage: dict) -> str:
    if stage is results["stages"][0]:
        return COLORS["teacher"]
    if stage["name"] == results.get("summary", {}).get("best"):
        return COLORS["best"]
    return COLORS["baseline"] if stage.get("is_baseline") else COLORS["stage"]


def accuracy_vs_latency(results: dict) -> bytes | None:
    """Scatter of accuracy (%) against p50 latency at the headline shape; the Pareto front as a step line."""
    points = [s for s in results["stages"] if s.get("accuracy") is not None and s.get("p50_ms")]
    if not points:
        return None
    plt, fig, ax = _figure()
    for s in points:
        ax.scatter(s["p50_ms"], 100 * s["accuracy"], s=60, color=_color(results, s), zorder=3,
                   edgecolors="black" if s.get("pareto") else "none")
        ax.annotate(s["name"], (s["p50_ms"], 100 * s["accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = sorted((s["p50_ms"], 100 * s["accuracy"]) for s in points if s.get("pareto"))
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=COLORS["best"], linestyle="--",
                linewidth=1, label="Pareto front", zorder=2)
        ax.legend(loc="lower right", fontsize=8)
    goals = results.get("goals") or {}
    teacher = results["stages"][0]
    if goals.get("max_accuracy_drop") is not None and teacher.get("accuracy") is not None:
        ax.axhline(100 * (teacher["accuracy"] - goals["max_accuracy_drop"]), color="grey", linestyle=":", linewidth=1)
    shape = results.get("primary") or {}
    ax.set_xlabel(f"p50 latency, ms ({shape.get('device', '')} batch {shape.get('batch_size')}, "
                  f"seq {shape.get('seq_len')})" if shape else "p50 latency, ms")
    ax.set_ylabel("accuracy, %")
    ax.set_xscale("log")
    ax.set_title("Accuracy vs latency (outlined: Pareto front)")
    ax.grid(True, which="both", alpha=0.3)
    return _png(plt, fig)


def perplexity_vs_decode(results: dict) -> bytes | None:
    """Causal LMs: perplexity against decode tokens/s at the headline shape; the Pareto front as a step line
    (up-left is worse: slower and higher perplexity)."""
    points = [s for s in results["stages"] if s.get("perplexity") is not None and s.get("decode_tokens_per_s")]
    if not points:
        return None
    plt, fig, ax = _figure()
    for s in points:
        ax.scatter(s["decode_tokens_per_s"], s["perplexity"], s=60, color=_color(results, s), zorder=3,
                   edgecolors="black" if s.get("pareto") else "none")
        ax.annotate(s["name"], (s["decode_tokens_per_s"], s["perplexity"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    front = sorted((s["decode_tokens_per_s"], s["perplexity"]) for s in points if s.get("pareto"))
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="pre", color=COLORS["best"], linestyle="--",
                linewidth=1, label="Pareto front", zorder=2)
        ax.legend(loc="upper left", fontsize=8)
    goals = results.get("goals") or {}
    teacher = results["stages"][0]
    if goals.get("max_perplexity_increase") is not None and teacher.get("perplexity"):
        ax.axhline(teacher["perplexity"] * (1 + goals["max_perplexity_increase"]), color="grey", linestyle=":",
                   linewidth=1)
    shape = results.get("primary") or {}
    ax.set_xlabel(f"decode tokens/s ({shape.get('device', '')} batch {shape.get('batch_size')}, prompt "
                  f"{shape.get('seq_len')}, KV cache)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_xscale("log")
    ax.set_title("Perplexity vs decode speed (outlined: Pareto front)")
    ax.grid(True, which="both", alpha=0.3)
    return _png(plt, fig)


def size_per_stage(results: dict) -> bytes | None:
    """Bars of size on disk (MB) per stage, with the zipped size (what unstructured sparsity saves) beside it."""
    stages = results["stages"]
    plt, fig, ax = _figure(7.5, 0.45 * len(stages) + 1.5)
    names = [s["name"] for s in stages][::-1]
    sizes = [s["size_mb"] for s in stages][::-1]
    zipped = [s.get("zipped_mb") or 0 for s in stages][::-1]
    y = range(len(stages))
    ax.barh([i + 0.2 for i in y], sizes, height=0.4, color=[_color(results, s) for s in stages][::-1], label="on disk")
    ax.barh([i - 0.2 for i in y], zipped, height=0.4, color="#aaaaaa", label="zipped")
    for i, v in zip(y, sizes, strict=False):
        ax.text(v, i + 0.2, f" {v:.3g}", va="center", fontsize=8)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set_xlabel("MB")
    ax.set_title("Size per stage")
    ax.legend(fontsize=8, loc="lower right")
    return _png(plt, fig)


def goals_chart(results: dict) -> bytes | None:
    """Speedup and accuracy drop per stage, with the goal thresholds as lines (only when goals are set)."""
    goals = results.get("goals") or {}
    if goals.get("min_speedup") is None and goals.get("max_accuracy_drop") is None:
        return None
    if any(s.get("perplexity") is not None for s in results["stages"]):
        return None  # causal LMs: the perplexity-vs-decode plot carries the goal line
    stages = results["stages"][1:]
    if not stages:
        return None
    plt = _figure(1, 1)[0]
    plt.close("all")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 0.4 * len(stages) + 1.8), dpi=100, sharey=True)
    names = [s["name"] for s in stages]
    y = list(range(len(stages)))
    ok = lambda s, g: "#2ca02c" if s.get("verdicts", {}).get(g) else ("#d62728" if g in s.get("verdicts", {}) else "#999999")  # noqa: E731
    ax1.barh(y, [s.get("speedup") or 0 for s in stages], color=[ok(s, "speedup") for s in stages])
    if goals.get("min_speedup") is not None:
        ax1.axvline(goals["min_speedup"], color="black", linestyle="--", linewidth=1)
    ax1.set_xlabel(f"speedup vs {goals.get('speedup_vs', 'teacher')} (x)")
    ax2.barh(y, [100 * (s.get("accuracy_drop") or 0) for s in stages], color=[ok(s, "accuracy") for s in stages])
    if goals.get("max_accuracy_drop") is not None:
        ax2.axvline(100 * goals["max_accuracy_drop"], color="black", linestyle="--", linewidth=1)
    ax2.set_xlabel("accuracy drop vs teacher (pt)")
    ax1.set_yticks(y, names, fontsize=8)
    ax1.invert_yaxis()
    fig.suptitle("Goals (green: met, red: missed; dashed: threshold)", fontsize=10)
    return _png(plt, fig)


# --- per-layer tables from pass metrics ----------------------------------------------------------------------


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def layer_series(metrics: dict, prefix: str = "") -> list[tuple[str, dict[str, float]]]:
    """Find per-layer tables in pass metrics: {layer: number}, {layer: {field: number}} or [{layer/name: ...,
    field: number}]. Returns (title, {layer: value}) pairs, one per numeric field."""
    found = []
    for key, value in (metrics or {}).items():
        title = f"{prefix}{key}"
        if isinstance(value, dict) and len(value) >= 2:
            if all(_is_number(v) for v in value.values()):
                found.append((title, {str(k): float(v) for k, v in value.items()}))
            elif all(isinstance(v, dict) for v in value.values()):
                fields = {f for v in value.values() for f, x in v.items() if _is_number(x)}
                for f in sorted(fields):
                    found.append((f"{title}: {f}", {str(k): float(v[f]) for k, v in value.items() if _is_number(v.get(f))}))
            else:
                found.extend(layer_series(value, f"{title}."))
        elif isinstance(value, list) and len(value) >= 2 and all(isinstance(v, dict) for v in value):
            label = next((k for k in ("layer", "name", "module", "node", "target") if k in value[0]), None)
            if label is None:
                continue
            fields = {f for v in value for f, x in v.items() if _is_number(x) and f != label}
            for f in sorted(fields):
                found.append((f"{title}: {f}", {str(v[label]): float(v[f]) for v in value if _is_number(v.get(f))}))
    return [(t, s) for t, s in found if len(s) >= 2]


PREFERRED = ("per_layer", "sensitivity", "per_node", "per_unit")


def stage_series(metrics: dict) -> list[tuple[str, dict[str, float]]]:
    """The per-layer series worth a chart: the `*_per_layer` / `*sensitivity*` ones when a pass names them so
    (they summarise its nested tables), else every per-layer table found."""
    series = layer_series(metrics)
    preferred = [(t, v) for t, v in series if any(word in t.split(":")[0] for word in PREFERRED)]
    direct = [(t, v) for t, v in preferred if ":" not in t]  # {layer: number} tables named by the pass
    return direct or preferred or series


def per_layer(results: dict) -> list[tuple[str, bytes]]:
    """One figure per stage with per-layer metrics: a horizontal bar chart per series, side by side."""
    charts = []
    for stage in results.get("pipeline") or results["stages"]:  # every stage ran, shown in the report or not
        series = stage_series(stage.get("pass_metrics") or {})[:4]
        if not series:
            continue
        rows = max(min(len(v), MAX_BARS) for _, v in series)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series) + 1.5, 0.22 * rows + 1.6), dpi=100,
                                 squeeze=False)
        for ax, (title, values) in zip(axes[0], series, strict=False):
            items = list(values.items())[:MAX_BARS]
            names = [k if len(k) <= 40 else "..." + k[-37:] for k, _ in items]
            ax.barh(range(len(items)), [v for _, v in items], color=COLORS["stage"])
            ax.set_yticks(range(len(items)), names, fontsize=7)
            ax.invert_yaxis()
            more = f" (first {MAX_BARS} of {len(values)})" if len(values) > MAX_BARS else ""
            ax.set_title(title + more, fontsize=8)
            ax.grid(True, axis="x", alpha=0.3)
        full = f"{stage['name']} ({stage.get('pass')}): per-layer " + ", ".join(t for t, _ in series)
        fig.suptitle(f"{stage['name']} ({stage.get('pass')})", fontsize=10)
        charts.append((full, _png(plt, fig)))
    return charts


def _loss_curves(metrics: dict, prefix: str = "") -> list[tuple[str, list]]:
    """`train_loss` lists of [step, loss] pairs in pass metrics (top level, or one level down, e.g. `recovery`)."""
    found = []
    for key, value in (metrics or {}).items():
        if key == "train_loss" and isinstance(value, list) and len(value) >= 2 and all(
                isinstance(v, (list, tuple)) and len(v) == 2 for v in value):
            found.append((prefix.rstrip("."), value))
        elif isinstance(value, dict) and not prefix:
            found += _loss_curves(value, f"{key}.")
    return found


def training_curves(results: dict) -> bytes | None:
    """Training loss against optimizer step for every stage that trained (moving average of the logged losses)."""
    import numpy as np

    curves = []
    for record in results.get("pipeline") or results["stages"]:
        for sub, points in _loss_curves(record.get("pass_metrics") or {}):
            curves.append((record["name"] + (f" ({sub})" if sub else ""), np.asarray(points, dtype=float)))
    if not curves:
        return None
    plt, fig, ax = _figure(7.5, 3.8)
    for label, pts in curves:
        window = max(1, len(pts) // 40)
        smooth = np.convolve(pts[:, 1], np.ones(window) / window, mode="valid")
        ax.plot(pts[window - 1:, 0], smooth, label=label, linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (moving average)")
    ax.set_title("Training curves")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def all_plots(results: dict) -> list[tuple[str, str, bytes]]:
    """(file stem, title, PNG) of every plot the report shows, in order."""
    out = []
    for stem, title, fn in (("perplexity_vs_decode", "Perplexity vs decode tokens/s", perplexity_vs_decode),
                            ("accuracy_vs_latency", "Accuracy vs latency", accuracy_vs_latency),
                            ("size", "Size per stage", size_per_stage), ("goals", "Goals", goals_chart),
                            ("training", "Training curves", training_curves)):
        png = fn(results)
        if png is not None:
            out.append((stem, title, png))
    for i, (title, png) in enumerate(per_layer(results)):
        out.append((f"layers_{i}", title, png))
    return out

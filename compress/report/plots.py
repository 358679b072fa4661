"""Report plots as PNG bytes (matplotlib, headless): accuracy vs latency with the Pareto front, size per stage,
speedup and accuracy drop against the goals, and per-layer tables (sparsity / rank / sensitivity) from pass
metrics. Each function takes built results (see `report.build`) and returns None when it has nothing to draw.

Every plot has a legend for its colours, markers and lines (the dotted goal line included); its labels are also
written into the PNG (text chunk `Legend`, a JSON list) so that tests and readers can check them: `png_legend`."""

from __future__ import annotations

import io
import json
import numbers
import re

from compress.report.intervals import number

COLORS = {"teacher": "#444444", "baseline": "#d62728", "peer": "#9467bd", "stage": "#1f77b4", "best": "#2ca02c"}
KIND_LABELS = {"teacher": "teacher (reference)", "baseline": "baseline", "peer": "peer runtime",
               "stage": "stage (compressed or exported)", "best": "best stage"}
GOAL_LINE = {"color": "grey", "linestyle": ":", "linewidth": 1.2}
MAX_BARS = 48


def _figure(width: float = 7.5, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return plt, fig, ax


def legend_labels(fig) -> list[str]:
    """The texts of every legend on `fig` (figure legends and axes legends)."""
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def png_legend(png: bytes) -> list[str]:
    """The legend labels `_png` wrote into a plot's PNG ([] for a PNG without them)."""
    from PIL import Image

    return json.loads(Image.open(io.BytesIO(png)).text.get("Legend", "[]"))


def _png(plt, fig, layout: bool = True) -> bytes:
    """The figure as PNG bytes, its legend labels in the `Legend` text chunk. `layout=False`: the caller has laid
    it out already (labels placed against the final axes, or a constrained layout)."""
    buf = io.BytesIO()
    if layout:
        fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Legend": json.dumps(legend_labels(fig), ensure_ascii=False)})
    plt.close(fig)
    return buf.getvalue()


def _kind(results: dict, stage: dict) -> str:
    if stage is results["stages"][0]:
        return "teacher"
    if stage["name"] == results.get("summary", {}).get("best"):
        return "best"
    if stage.get("is_baseline"):
        return "baseline"
    return "peer" if stage.get("is_peer") else "stage"


def _color(results: dict, stage: dict) -> str:
    return COLORS[_kind(results, stage)]


def _kind_handles(results: dict, stages: list[dict], bars: bool = False, prefix: str = "") -> list:
    """Legend entries for the stage colours that appear among `stages` (dots, or patches for bar charts)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    present = {_kind(results, s) for s in stages}
    kinds = [k for k in COLORS if k in present]
    if bars:
        return [Patch(facecolor=COLORS[k], label=prefix + KIND_LABELS[k]) for k in kinds]
    return [Line2D([], [], marker="o", linestyle="none", markersize=7, markerfacecolor=COLORS[k],
                   markeredgecolor="none", label=prefix + KIND_LABELS[k]) for k in kinds]


def _legend_outside(ax, handles: list) -> None:
    """The legend to the right of the plot, where it covers no point."""
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=8,
              frameon=False)


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


# Where a point's name may go, in order of preference: (x, y) direction of the offset, alignment of the text.
_SPOTS = [(1, 1, "left", "bottom"), (1, -1, "left", "top"), (-1, 1, "right", "bottom"), (-1, -1, "right", "top"),
          (0, 1, "center", "bottom"), (0, -1, "center", "top"), (1, 0, "left", "center"), (-1, 0, "right", "center")]


def place_labels(ax, xy: list[tuple[float, float]], names: list[str], fontsize: float = 8,
                 radius: float = 6) -> list:
    """Write each point's name beside it where it covers no other name, marker or line and stays inside the axes: the
    eight spots around the point, then the same spots farther out with a leader line; when none is free, the least
    crowded spot. `radius`: the markers' radius in points. Call it once the figure is laid out (positions are
    measured on screen). Returns the annotations."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    pts = ax.transData.transform(xy)
    radius = radius * ax.figure.dpi / 72  # in pixels (6 pt: a marker of area 60 pt^2 with its outline)
    markers = [Bbox.from_extents(x - radius, y - radius, x + radius, y + radius) for x, y in pts]
    frame = ax.get_window_extent(renderer)
    taken: list = []
    for line in ax.lines:  # the goal line and the Pareto step: a name written across a line is hard to read
        path = line.get_transform().transform(line.get_xydata())
        taken += [Bbox.from_extents(min(a[0], b[0]) - 2, min(a[1], b[1]) - 2, max(a[0], b[0]) + 2, max(a[1], b[1]) + 2)
                  for a, b in zip(path[:-1], path[1:], strict=True)]
    placed = []
    for i, name in enumerate(names):
        best = None
        for distance in (radius * 72 / ax.figure.dpi - 1, 14, 24, 36):
            for dx, dy, ha, va in _SPOTS:
                offset = (dx * distance, dy * distance)
                text = ax.annotate(name, xy[i], xytext=offset, textcoords="offset points", ha=ha, va=va,
                                   fontsize=fontsize)
                box = text.get_window_extent(renderer).padded(2)
                text.remove()
                crowd = sum(_overlap(box, other) for j, other in enumerate(markers) if j != i)
                crowd += sum(_overlap(box, other) for other in taken)
                crowd += 4 * (box.width * box.height - _overlap(box, frame))  # outside the axes: worse than crowded
                if best is None or crowd < best[0]:
                    best = (crowd, offset, ha, va, box, distance)
                if crowd == 0:
                    break
            if best[0] == 0:
                break
        _, offset, ha, va, box, distance = best
        arrow = {"arrowstyle": "-", "color": "grey", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4} if distance > 13 else None
        placed.append(ax.annotate(names[i], xy[i], xytext=offset, textcoords="offset points", ha=ha, va=va,
                                  fontsize=fontsize, arrowprops=arrow))
        taken.append(box)
    return placed


def _tradeoff(results: dict, points: list[dict], x: str, y, *, goal: tuple[float, str] | None, xlabel: str,
              ylabel: str, title: str, where: str) -> bytes:
    """A stage scatter (coloured by kind, Pareto points outlined, the front as a dashed step line, the goal as a
    dotted line), each point named beside it without collisions, the legend on the right."""
    from matplotlib.lines import Line2D

    plt, fig, ax = _figure(9.5, 4.4)
    xs = [s[x] for s in points]
    ys = [y(s) for s in points]
    for s, px, py in zip(points, xs, ys, strict=True):
        ax.scatter(px, py, s=60, color=_color(results, s), zorder=3, edgecolors="black" if s.get("pareto") else "none")
    handles = _kind_handles(results, points)
    front = sorted((px, py) for s, px, py in zip(points, xs, ys, strict=True) if s.get("pareto"))
    if front:
        if len(front) > 1:
            ax.step([p[0] for p in front], [p[1] for p in front], where=where, color=COLORS["best"], linestyle="--",
                    linewidth=1, zorder=2)
        handles.append(Line2D([], [], color=COLORS["best"], linestyle="--", linewidth=1, marker="o", markersize=7,
                              markerfacecolor="white", markeredgecolor="black", label="Pareto front (outlined)"))
    if goal is not None:
        ax.axhline(goal[0], **GOAL_LINE)
        handles.append(Line2D([], [], **GOAL_LINE, label=goal[1]))
    _legend_outside(ax, handles)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.1)  # room for the names of the outermost points
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    place_labels(ax, list(zip(xs, ys, strict=True)), [s["name"] for s in points])
    return _png(plt, fig, layout=False)


def accuracy_vs_latency(results: dict) -> bytes | None:
    """Scatter of accuracy (%) against p50 latency at the headline shape; the Pareto front as a step line."""
    points = [s for s in results["stages"] if s.get("accuracy") is not None and s.get("p50_ms")]
    if not points:
        return None
    goals = results.get("goals") or {}
    teacher = results["stages"][0]
    goal = None
    if goals.get("max_accuracy_drop") is not None and teacher.get("accuracy") is not None:
        line = 100 * (teacher["accuracy"] - goals["max_accuracy_drop"])
        goal = (line, f"goal: accuracy at most {number(100 * goals['max_accuracy_drop'])} pt\nbelow the teacher "
                      f"({number(line)}%)")
    shape = results.get("primary") or {}
    xlabel = (f"p50 latency, ms ({shape.get('device', '')} batch {shape.get('batch_size')}, seq {shape.get('seq_len')})"
              if shape else "p50 latency, ms")
    return _tradeoff(results, points, "p50_ms", lambda s: 100 * s["accuracy"], goal=goal, xlabel=xlabel,
                     ylabel="accuracy, %", title="Accuracy vs latency", where="post")


def perplexity_vs_decode(results: dict) -> bytes | None:
    """Causal LMs: perplexity against decode tokens/s at the headline shape; the Pareto front as a step line
    (up-left is worse: slower and higher perplexity)."""
    points = [s for s in results["stages"] if s.get("perplexity") is not None and s.get("decode_tokens_per_s")]
    if not points:
        return None
    goals = results.get("goals") or {}
    teacher = results["stages"][0]
    goal = None
    if goals.get("max_perplexity_increase") is not None and teacher.get("perplexity"):
        line = teacher["perplexity"] * (1 + goals["max_perplexity_increase"])
        goal = (line, f"goal: perplexity at most {number(100 * goals['max_perplexity_increase'], '{:.1f}')}%\n"
                      f"above the teacher ({number(line)})")
    shape = results.get("primary") or {}
    xlabel = (f"decode tokens/s ({shape.get('device', '')} batch {shape.get('batch_size')}, prompt "
              f"{shape.get('seq_len')}, KV cache)")
    return _tradeoff(results, points, "decode_tokens_per_s", lambda s: s["perplexity"], goal=goal, xlabel=xlabel,
                     ylabel="perplexity (lower is better)", title="Perplexity vs decode speed", where="pre")


def size_per_stage(results: dict) -> bytes | None:
    """Bars of size on disk (MB) per stage, with the zipped size (what unstructured sparsity saves) beside it."""
    from matplotlib.patches import Patch

    stages = results["stages"]
    plt, fig, ax = _figure(9.0, 0.45 * len(stages) + 1.5)
    names = [s["name"] for s in stages][::-1]
    sizes = [s["size_mb"] for s in stages][::-1]
    zipped = [s.get("zipped_mb") or 0 for s in stages][::-1]
    y = range(len(stages))
    ax.barh([i + 0.2 for i in y], sizes, height=0.4, color=[_color(results, s) for s in stages][::-1])
    ax.barh([i - 0.2 for i in y], zipped, height=0.4, color="#aaaaaa")
    for i, v in zip(y, sizes, strict=False):
        ax.text(v, i + 0.2, f" {number(v, '{:.3g}')}", va="center", fontsize=8)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set_xlabel("size, MB")
    ax.set_ylabel("stage")
    ax.set_title("Size per stage")
    ax.margins(x=0.08)  # room for the figures written after the bars
    handles = _kind_handles(results, stages, bars=True, prefix="on disk: ")
    handles.append(Patch(facecolor="#aaaaaa", label="zipped (any stage)"))
    _legend_outside(ax, handles)
    return _png(plt, fig)


def goals_chart(results: dict) -> bytes | None:
    """Speedup and accuracy drop per stage, with the goal thresholds as lines (only when goals are set)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

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
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.4 * len(stages) + 1.8), dpi=100, sharey=True)
    names = [s["name"] for s in stages]
    y = list(range(len(stages)))
    verdict = {True: ("#2ca02c", "goal met"), False: ("#d62728", "goal missed"), None: ("#999999", "no verdict")}
    ok = lambda s, g: verdict[s.get("verdicts", {}).get(g)][0]  # noqa: E731
    ax1.barh(y, [s.get("speedup") or 0 for s in stages], color=[ok(s, "speedup") for s in stages])
    if goals.get("min_speedup") is not None:
        ax1.axvline(goals["min_speedup"], color="black", linestyle="--", linewidth=1)
    ax1.set_xlabel(f"speedup vs {goals.get('speedup_vs', 'teacher')}, x (higher is better)")
    ax2.barh(y, [100 * (s.get("accuracy_drop") or 0) for s in stages], color=[ok(s, "accuracy") for s in stages])
    if goals.get("max_accuracy_drop") is not None:
        ax2.axvline(100 * goals["max_accuracy_drop"], color="black", linestyle="--", linewidth=1)
    ax2.set_xlabel("accuracy drop vs teacher, pt (lower is better)")
    ax1.set_yticks(y, names, fontsize=8)
    ax1.set_ylabel("stage")
    ax1.invert_yaxis()
    shown = {s.get("verdicts", {}).get(g) for s in stages for g in ("speedup", "accuracy")}
    handles = [Patch(facecolor=c, label=label) for v, (c, label) in verdict.items() if v in shown]
    handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1, label="goal threshold"))
    _legend_outside(ax2, handles)
    fig.suptitle("Goals per stage", fontsize=10)
    return _png(plt, fig)


# --- per-layer tables from pass metrics ----------------------------------------------------------------------


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


NAMED_PER_LAYER = ("per_layer", "per_node", "per_unit", "sensitivity", "layers")


def _is_layer_table(title: str, keys) -> bool:
    """A flat {key: number} table is per layer when its name says so or every key holds a digit (`layer.3`, `6`);
    else it is a record of different quantities (`{"k": 64, "kd_full": 2.0}`), each with its own unit."""
    return any(word in title for word in NAMED_PER_LAYER) or all(any(c.isdigit() for c in str(k)) for k in keys)


def _tables(metrics: dict, prefix: str = "") -> list[tuple[str, dict[str, float], bool]]:
    """(title, {key: value}, per layer?) for every numeric table in pass metrics."""
    found = []
    for key, value in (metrics or {}).items():
        title = f"{prefix}{key}"
        if isinstance(value, dict) and len(value) >= 2:
            if all(_is_number(v) for v in value.values()):
                found.append((title, {str(k): float(v) for k, v in value.items()}, _is_layer_table(title, value)))
            elif all(isinstance(v, dict) for v in value.values()):
                fields = {f for v in value.values() for f, x in v.items() if _is_number(x)}
                for f in sorted(fields):
                    found.append((f"{title}: {f}", {str(k): float(v[f]) for k, v in value.items()
                                                    if _is_number(v.get(f))}, True))
            else:
                found.extend(_tables(value, f"{title}."))
        elif isinstance(value, list) and len(value) >= 2 and all(isinstance(v, dict) for v in value):
            label = next((k for k in ("layer", "name", "module", "node", "target") if k in value[0]), None)
            if label is None:
                continue
            fields = {f for v in value for f, x in v.items() if _is_number(x) and f != label}
            for f in sorted(fields):
                found.append((f"{title}: {f}", {str(v[label]): float(v[f]) for v in value if _is_number(v.get(f))},
                              True))
    return [t for t in found if len(t[1]) >= 2]


def layer_series(metrics: dict, prefix: str = "") -> list[tuple[str, dict[str, float]]]:
    """Find per-layer tables in pass metrics: {layer: number}, {layer: {field: number}} or [{layer/name: ...,
    field: number}]. Returns (title, {layer: value}) pairs, one per numeric field. Records of different quantities
    (`topk_check: {k, kd_full, ...}`) are not per-layer tables: see `record_series`."""
    return [(t, v) for t, v, per_layer in _tables(metrics, prefix) if per_layer]


def record_series(metrics: dict) -> list[tuple[str, dict[str, float]]]:
    """Flat records of different quantities in pass metrics (`{"k": 64, "kd_full": 2.0, "relative_gap": 0.12}`)."""
    return [(t, v) for t, v, per_layer in _tables(metrics) if not per_layer]


PREFERRED = ("per_layer", "sensitivity", "per_node", "per_unit")


def stage_series(metrics: dict) -> list[tuple[str, dict[str, float]]]:
    """The per-layer series worth a chart: the `*_per_layer` / `*sensitivity*` ones when a pass names them so
    (they summarise its nested tables), else every per-layer table found."""
    series = layer_series(metrics)
    preferred = [(t, v) for t, v in series if any(word in t.split(":")[0] for word in PREFERRED)]
    direct = [(t, v) for t, v in preferred if ":" not in t]  # {layer: number} tables named by the pass
    return direct or preferred or series


# Words in a metric's name -> the unit of its axis (first match wins). Quantities that share a unit share a panel;
# a name that matches none gets a panel of its own.
UNITS = (({"kd", "kl"}, "KL divergence, nats"), ({"loss", "nll"}, "loss, nats"),
         ({"ppl", "perplexity"}, "perplexity"),
         ({"sparsity", "fraction", "energy", "mass", "gap", "agreement", "error", "ratio", "share"}, "fraction (0-1)"),
         ({"ms"}, "milliseconds"), ({"mb"}, "MB"),
         ({"k", "rank", "units", "neurons", "heads", "groups", "blocks", "count", "tokens", "steps", "params"}, "count"))


def unit_of(name: str) -> str | None:
    """The unit a metric's name implies (`kd_full` -> KL, nats; `rank_per_layer` -> count), None when unknown."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    return next((unit for keys, unit in UNITS if words & keys), None)


def _axis_label(title: str) -> str:
    """`units_per_layer: removed_fraction` -> `removed_fraction (fraction (0-1))`: what the bars measure, in what."""
    quantity = title.split(":")[-1].strip().split(".")[-1].replace("_per_layer", "")
    unit = unit_of(quantity)
    return f"{quantity}, {unit}" if unit else quantity


def _layer_figure(stage: dict, series: list[tuple[str, dict[str, float]]]) -> bytes:
    """One horizontal bar chart per per-layer series, side by side: each with its own x axis and unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = max(min(len(v), MAX_BARS) for _, v in series)
    fig, axes = plt.subplots(1, len(series), figsize=(3.8 * len(series) + 1.8, 0.22 * rows + 2.2), dpi=100,
                             squeeze=False, layout="constrained")
    for ax, (title, values) in zip(axes[0], series, strict=False):
        items = list(values.items())[:MAX_BARS]
        names = [k if len(k) <= 40 else "..." + k[-37:] for k, _ in items]
        ax.barh(range(len(items)), [v for _, v in items], color=COLORS["stage"])
        ax.set_yticks(range(len(items)), names, fontsize=7)
        ax.invert_yaxis()
        more = f" (first {MAX_BARS} of {len(values)})" if len(values) > MAX_BARS else ""
        ax.set_title(title + more, fontsize=8)
        ax.set_xlabel(_axis_label(title), fontsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0][0].set_ylabel("layer", fontsize=8)
    fig.legend(handles=[Patch(facecolor=COLORS["stage"], label=f"{stage['name']}: one bar per layer, on each "
                              "panel's own axis")], loc="outside lower center", fontsize=8, frameon=False)
    fig.suptitle(f"{stage['name']} ({stage.get('pass')})", fontsize=10)
    return _png(plt, fig, layout=False)


def record_panels(records: list[tuple[str, dict[str, float]]]) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """{(record title, unit): [(quantity, value)]}: the quantities of each record grouped by unit, one panel each
    (a quantity of unknown unit alone, its name as the unit)."""
    panels: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for title, values in records:
        for name, value in values.items():
            panels.setdefault((title, unit_of(name) or name), []).append((name, value))
    return panels


def _record_figure(stage: dict, records: list[tuple[str, dict[str, float]]]) -> bytes:
    """Records of different quantities (`topk_check: k, kd_full, ...`): one panel per unit, so that a count (k=64)
    never shares an axis with a KL of 2 nats; each bar carries its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels = record_panels(records)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels) + 1.2, 0.35 * max(map(len, panels.values()))
                                                      + 2.2), dpi=100, squeeze=False, layout="constrained")
    for ax, ((title, unit), items) in zip(axes[0], panels.items(), strict=True):
        ax.barh(range(len(items)), [v for _, v in items], color=COLORS["stage"], height=0.6)
        for i, (_, v) in enumerate(items):
            ax.text(v, i, f" {number(v, '{:,.0f}' if float(v).is_integer() else '{:#.4g}')}", va="center", fontsize=7)
        ax.set_yticks(range(len(items)), [n for n, _ in items], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(unit, fontsize=8)
        if len(records) > 1:
            ax.set_title(title, fontsize=8)
        ax.margins(x=0.3)  # room for the value after the bar
        ax.grid(True, axis="x", alpha=0.3)
    fig.legend(handles=[Patch(facecolor=COLORS["stage"], label=f"{stage['name']}: "
                              f"{', '.join(t for t, _ in records)}, one panel per unit")],
               loc="outside lower center", fontsize=8, frameon=False)
    fig.suptitle(f"{stage['name']} ({stage.get('pass')}): {', '.join(t for t, _ in records)}", fontsize=10)
    return _png(plt, fig, layout=False)


def per_layer(results: dict) -> list[tuple[str, bytes]]:
    """One figure per stage with per-layer metrics: a horizontal bar chart per series, side by side; a stage with
    no per-layer table but a record of quantities (`topk_check`) gets one panel per unit instead."""
    charts = []
    for stage in results.get("pipeline") or results["stages"]:  # every stage ran, shown in the report or not
        metrics = stage.get("pass_metrics") or {}
        series = stage_series(metrics)[:4]
        if series:
            full = f"{stage['name']} ({stage.get('pass')}): per-layer " + ", ".join(t for t, _ in series)
            charts.append((full, _layer_figure(stage, series)))
            continue
        records = record_series(metrics)[:2]
        if records:
            full = f"{stage['name']} ({stage.get('pass')}): " + ", ".join(t for t, _ in records) + " (one panel per unit)"
            charts.append((full, _record_figure(stage, records)))
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

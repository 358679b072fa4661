"""The report of one `compress search`: every trial, the Pareto front, the chosen model against the teacher and
the baselines, and what the search cost; `search.json` (the data), `report.md`, `report.html`, `pareto.png`.

Renders plain data (the dict `compress.pipeline.search.search` returns); computes only the front and the ratios.
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
from pathlib import Path

from compress.report.intervals import number
from compress.report.render import md_table


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes: lower x (latency) and higher y (quality)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return front


def _quality(results: dict, row: dict | None) -> float | None:
    """Accuracy in % (classifiers) or perplexity (causal LMs) of a trial's figures."""
    if not row:
        return None
    if results["budget_metric"] == "perplexity":
        return row.get("perplexity")
    return None if row.get("accuracy") is None else 100 * row["accuracy"]


def _settings(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in (settings or {}).items())


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return number(value, f"{{:.{digits}f}}")
    return str(value)


def trial_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """One row per trial: settings, state, fidelity reached, quality, loss vs the teacher, latency, size, seconds."""
    causal = results["budget_metric"] == "perplexity"
    head = ["#", "state", "settings", "fidelity", "ppl" if causal else "val acc %", "Δ ppl %" if causal else "Δ pt",
            "p50 ms", "size MB", "seconds", "note"]
    rows, first_with = [], {}
    for t in results["trials"]:
        figures = t["full"] or t["low"] or {}
        note = t["stopped"] or t["error"] or (f"retry of #{t['retry_of']}" if t["retry_of"] is not None else "")
        same = first_with.setdefault(json.dumps(t["settings"], sort_keys=True), t["number"])
        if same != t["number"]:  # the sampler proposed settings again: every stage came from the cache
            note = (f"same settings as #{same} (stage cache); " + note).rstrip("; ")
        if t["feasible"]:
            note = ("within budget; " + note).rstrip("; ")
        rows.append([str(t["number"]), t["state"], _settings(t["settings"]), t["fidelity"] or "-",
                     _fmt(_quality(results, figures)), _fmt(-100 * figures["loss"]) if "loss" in figures else "-",
                     _fmt(figures.get("p50_ms"), 3), _fmt(figures.get("size_mb"), 3), _fmt(t["seconds"], 1), note])
    return head, rows


def chosen_table(results: dict) -> tuple[list[str], list[list[str]]] | None:
    """The chosen model against the teacher and the baselines: validation and test quality, final-bench p50."""
    chosen = results.get("chosen")
    if not chosen:
        return None
    causal = results["budget_metric"] == "perplexity"
    q = "ppl" if causal else "acc %"
    head = ["model", "backend", f"validation {q}", f"test {q}", "Δ test " + ("%" if causal else "pt"), "p50 ms",
            "× teacher", "× " + (next(iter(results["references"]), "baseline")), "size MB"]
    test = results["test"]["stages"]
    primary = results.get("primary") or {}
    names = ["teacher", *results["references"], "chosen"]
    label = {"teacher": "teacher", "chosen": f"trial-{chosen['number']}"}
    p50 = {n: (primary.get(label.get(n, n)) or {}).get("p50_ms") for n in names}
    first_ref = next(iter(results["references"]), None)
    val = {"teacher": chosen["full"].get("teacher_perplexity" if causal else "teacher_accuracy"),
           "chosen": chosen["full"].get("perplexity" if causal else "accuracy"),
           **{n: r.get("perplexity" if causal else "accuracy") for n, r in results["references"].items()}}

    def q_of(v):
        return None if v is None else (v if causal else 100 * v)

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    rows = []
    teacher_test = test["teacher"].get("perplexity" if causal else "accuracy")
    for n in names:
        row = test.get(n) or {}
        t = row.get("perplexity" if causal else "accuracy")
        delta = None
        if t is not None and teacher_test is not None:
            delta = 100 * (t / teacher_test - 1) if causal else 100 * (t - teacher_test)
        shown = f"chosen (trial {chosen['number']})" if n == "chosen" else n
        rows.append([shown, row.get("backend") or "-", _fmt(q_of(val.get(n))), _fmt(q_of(t)), _fmt(delta),
                     _fmt(p50[n], 3), ratio(p50["teacher"], p50[n]), ratio(p50.get(first_ref), p50[n]),
                     _fmt(row.get("size_mb"), 3)])
    return head, rows


def result_note(results: dict) -> str:
    """The Result box (Markdown inline): the chosen trial, its settings, its figures on validation and test against
    the teacher, its final-bench latency against the teacher and the first baseline, its size, and where it is."""
    chosen = results.get("chosen")
    if not chosen:
        feasible = sum(1 for t in results["trials"] if t["feasible"])
        return (f"No model chosen yet: {results.get('note') or 'trials only'}; {len(results['trials'])} trials, "
                f"{feasible} within the budget. Stage cache: `{results['run_dir']}/`.")
    causal = results["budget_metric"] == "perplexity"
    full, test = chosen["full"], results["test"]["stages"]
    key = "perplexity" if causal else "accuracy"

    def q(v):  # perplexity as is, accuracy in %
        return "-" if v is None else (number(v) if causal else number(100 * v) + "%")

    t_test, c_test = test["teacher"].get(key), test["chosen"].get(key)
    delta = ""
    if t_test is not None and c_test is not None:
        delta = (f" ({number(100 * (c_test / t_test - 1), '{:+.2f}')}%)" if causal
                 else f" ({number(100 * (c_test - t_test), '{:+.2f}')} pt)")
    primary = results.get("primary") or {}
    p50 = (primary.get(f"trial-{chosen['number']}") or {}).get("p50_ms")
    speed = []
    for name in ["teacher", *list(results["references"])[:1]]:
        ref = (primary.get(name) or {}).get("p50_ms")
        if p50 and ref:
            speed.append(f"{ref / p50:.2f}x as fast as `{name}`")
    shape = results.get("primary_shape") or {}
    where = f" at {shape.get('device')} batch {shape.get('batch_size')} seq {shape.get('seq_len')}" if shape else ""
    latency = (f"p50 {number(p50, '{:.3f}')} ms{where} in the final bench ({', '.join(speed)})" if p50
               else "latency not re-timed")
    return (f"Best trial #{chosen['number']} ({_settings(chosen['settings'])}): validation {key} {q(full.get(key))} vs "
            f"the teacher's {q(full.get('teacher_' + key))}; test {key} {q(c_test)} vs {q(t_test)}{delta}; {latency}; "
            f"{number(full.get('size_mb'), '{:.1f}')} MB. Model: `{results['run_dir']}/best/` (trial stage "
            f"`{full.get('path')}`); every trial's figures: `search.json`.")


def finalist_table(results: dict) -> tuple[list[str], list[list[str]]]:
    head = ["trial", "settings", "validation", "trial p50 ms", "final-bench p50 ms", "size MB"]
    rows = [[str(r["number"]), _settings(r["settings"]), _fmt(_quality(results, r["full"])),
             _fmt(r["full"].get("p50_ms"), 3), _fmt(r.get("final_p50_ms"), 3), _fmt(r["full"]["size_mb"], 3)]
            for r in results.get("finalists", [])]
    return head, rows


def policy_lines(results: dict) -> list[str]:
    """How each finalist-bench measurement was run (OMP wait policy and ORT spinning, per worker)."""
    out = []
    for row in (results.get("bench") or {}).get("results", []):
        if "wait_policy" in row:
            out.append(f"{row['model']} ({row['backend']}, b{row['batch_size']} s{row['seq_len']}): "
                       f"{row['wait_policy']}")
    return out


def pareto_png(results: dict) -> bytes | None:
    """Validation quality against trial p50 latency for every full-fidelity trial, marker area ~ size; the Pareto
    front as a step line; the chosen trial in green, low-fidelity stops hollow; a legend for all of it."""
    full = [t for t in results["trials"] if t["full"] and t["full"].get("p50_ms")]
    if not full:
        return None
    from matplotlib.lines import Line2D

    from compress.report.plots import GOAL_LINE, _figure, _legend_outside, _png, place_labels

    causal = results["budget_metric"] == "perplexity"
    plt, fig, ax = _figure(9.5, 4.4)
    pts = [(t["full"]["p50_ms"], _quality(results, t["full"]) * (-1 if causal else 1)) for t in full]
    front = set(pareto(pts))
    chosen = (results.get("chosen") or {}).get("number")
    sizes = [t["full"]["size_mb"] for t in full]
    biggest = max(sizes) or 1
    colors = {"chosen": "#2ca02c", "within": "#1f77b4", "over": "#d62728"}
    shown, named = set(), {}  # named: point -> the trial numbers drawn there (a repeated setting lands on its twin)
    for i, t in enumerate(full):
        kind = "chosen" if t["number"] == chosen else ("within" if t["feasible"] else "over")
        shown.add(kind)
        ax.scatter(t["full"]["p50_ms"], _quality(results, t["full"]), s=30 + 200 * sizes[i] / biggest,
                   color=colors[kind], edgecolors="black" if i in front else "none", zorder=4 if kind == "chosen" else 3,
                   alpha=0.8)
        named.setdefault((t["full"]["p50_ms"], _quality(results, t["full"])), []).append(str(t["number"]))
    low = [t for t in results["trials"] if not t["full"] and t["low"] and t["low"].get("p50_ms")]
    for t in low:
        ax.scatter(t["low"]["p50_ms"], _quality(results, t["low"]), s=25, facecolors="none", edgecolors="grey",
                   zorder=2)
    dot = {"marker": "o", "linestyle": "none", "markersize": 7}
    labels = {"chosen": "chosen trial", "within": "full fidelity, within budget", "over": "full fidelity, over budget"}
    handles = [Line2D([], [], **dot, markerfacecolor=colors[k], markeredgecolor="none", label=labels[k])
               for k in colors if k in shown]
    if low:
        handles.append(Line2D([], [], **dot, markerfacecolor="none", markeredgecolor="grey",
                              label="stopped at low fidelity"))
    line = sorted((pts[i][0], abs(pts[i][1])) for i in front)
    if len(line) > 1:
        ax.step([p[0] for p in line], [p[1] for p in line], where="post", color="#2ca02c", linestyle="--",
                linewidth=1, zorder=1)
    handles.append(Line2D([], [], color="#2ca02c", linestyle="--", linewidth=1, marker="o", markersize=7,
                          markerfacecolor="white", markeredgecolor="black", label="Pareto front (outlined)"))
    teacher = full[0]["full"].get("teacher_perplexity" if causal else "teacher_accuracy")
    if teacher is not None:
        search = results["search"]
        limit = teacher * (1 + search["max_perplexity_increase"]) if causal else \
            100 * (teacher - search["max_accuracy_drop"])
        ax.axhline(limit, **GOAL_LINE)
        budget = (f"+{number(100 * search['max_perplexity_increase'], '{:.1f}')}% perplexity" if causal
                  else f"-{number(100 * search['max_accuracy_drop'])} pt accuracy")
        handles.append(Line2D([], [], **GOAL_LINE, label=f"budget: teacher {budget}\n({number(limit)}"
                              f"{'' if causal else '%'})"))
    handles.append(Line2D([], [], **dot, markerfacecolor="none", markeredgecolor="none",
                          label="marker area ~ size on disk;\nlabel = trial number"))
    _legend_outside(ax, handles)
    ax.set_xlabel("p50 latency at the primary shape, ms (trial bench)")
    ax.set_ylabel("validation perplexity" if causal else "validation accuracy, %")
    ax.set_title(f"{results['recipe']}: trials", fontsize=10)
    fig.tight_layout()
    place_labels(ax, list(named), [", ".join(numbers) for numbers in named.values()], fontsize=7, radius=9)
    return _png(plt, fig, layout=False)


def _sections(results: dict) -> list[tuple[str, str, tuple | None]]:
    """(title, prose, table) in report order; both renderers walk this."""
    s = results["search"]
    causal = results["budget_metric"] == "perplexity"
    budget = f"perplexity +{100 * s['max_perplexity_increase']:.1f}%" if causal else \
        f"accuracy drop ≤ {100 * s['max_accuracy_drop']:.2f} pt"
    shape = results.get("primary_shape") or {}
    objective = (f"p50 latency at {shape.get('device', '?')} batch {shape.get('batch_size')} seq {shape.get('seq_len')}"
                 if s["objective"] == "latency" else "size on disk")
    states = {}
    for t in results["trials"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    intro = (f"Minimize {objective} of stage `{results['candidate']}` subject to {budget} versus the teacher on the "
             f"validation split. Space: {', '.join(s['space'])} ({results['space_size']} settings); sampler "
             f"{s['sampler']}; {len(results['trials'])} trials ({', '.join(f'{v} {k}' for k, v in states.items())}). "
             "Candidates were chosen on the validation split only; the test split was read once, after the choice, "
             "for the chosen model, the teacher and the baselines.")
    out = [("", intro, None)]
    chosen = chosen_table(results)
    if chosen:
        test = results["test"]
        out.append(("Chosen model", f"Test: `{test['split'].get('split')}` ({test['examples']} examples), scored once. "
                    "Latency: the finalists, the teacher and the baselines in one interleaved bench (one process "
                    "per model). Model: `" + results["run_dir"] + "/best/`.", chosen))
        out.append(("Finalists", "The best trials on validation, re-timed together; the fastest was chosen.",
                    finalist_table(results)))
    else:
        out.append(("Chosen model", results.get("note") or "no model chosen yet (trials only)", None))
    out.append(("Trials", "Every trial: settings, the fidelity it reached, validation figures and its seconds.",
                trial_table(results)))
    cost = results["cost"]
    low = sum(1 for t in results["trials"] if t["low"])
    full = sum(1 for t in results["trials"] if t["full"])
    out.append(("Cost", f"Trials: {cost['trial_seconds'] / 60:.1f} min of trial time ({low} low-fidelity and {full} "
                f"full-fidelity runs); finalists and test scoring: {cost.get('final_seconds', 0) / 60:.1f} min; "
                f"total {cost['total_seconds'] / 60:.1f} min.", None))
    policies = policy_lines(results)
    if policies:
        out.append(("Timing", "Each bench worker set its own wait policy, as its runtime's users run it: "
                    + "; ".join(policies) + ".", None))
    return out


def markdown(results: dict, plot: str | None) -> str:
    lines = [f"# Search: {results['recipe']}", ""]
    if results.get("description"):
        lines += [results["description"], ""]
    lines += [f"**Result.** {result_note(results)}", ""]
    for title, prose, table in _sections(results):
        if title:
            lines += [f"## {title}", ""]
        lines += [prose, ""]
        if table:
            lines += [md_table(*table), ""]
        if title == "Trials" and plot:
            lines += [f"![Validation accuracy vs latency, every trial]({plot})", ""]
    return "\n".join(lines)


def html_report(results: dict, png: bytes | None) -> str:
    """The page, styled like the run report (`report.html`): the Result box, then the sections of `report.md`."""
    from compress.report.html import _md_inline, _page, _table, result_box

    esc = html.escape
    parts = [f"<h1>Search: {esc(results['recipe'])}</h1>"]
    if results.get("description"):
        parts.append(f"<p>{_md_inline(results['description'])}</p>")
    parts.append(result_box(result_note(results)))
    for title, prose, table in _sections(results):
        if title:
            parts.append(f"<h2>{esc(title)}</h2>")
        parts.append(f'<p{"" if title else " class=small"}>{_md_inline(prose)}</p>')
        if table:
            head, rows = table
            best = {i for i, r in enumerate(rows) if r[0].startswith("chosen")} if title == "Chosen model" else None
            parts.append(_table(head, rows, best))
        if title == "Trials" and png:
            caption = "Validation quality vs latency, every trial"
            parts.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
    return _page(results, parts, title=f"compress search: {results['recipe']}")


def write(results: dict, out_dir: str | Path) -> Path:
    """Write search.json, report.md, report.html and pareto.png into `out_dir`, replacing it as a whole."""
    out_dir = Path(out_dir)
    png = pareto_png(results)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if png:
        (tmp / "pareto.png").write_bytes(png)
    (tmp / "search.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (tmp / "report.md").write_text(markdown(results, "pareto.png" if png else None))
    (tmp / "report.html").write_text(html_report(results, png))
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir

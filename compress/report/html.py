"""A self-contained HTML report: inline CSS, plots embedded as base64 PNG, no external requests.

A small inline script records, once the page has loaded, how many images decoded (`data-images-ok="n/m"` on
<body>) and whether the page fits the window (`data-layout="page width/window width/tables scrolling"`), so a
headless browser can check that every plot rendered and nothing overflows (`report.browser.check_html`)."""

from __future__ import annotations

import base64
import html
import re

from compress.report import causal, render

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1320px;color:#222;padding:0 1rem}
p,ul{max-width:1100px}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
.table{overflow-x:auto;margin:.5rem 0;max-width:100%}
table{border-collapse:separate;border-spacing:0;font-size:.8rem;border-top:1px solid #ddd;border-left:1px solid #ddd}
th,td{border-right:1px solid #ddd;border-bottom:1px solid #ddd;padding:.25rem .4rem;text-align:right;white-space:nowrap;background:#fff}
th{background:#f4f4f4;white-space:normal;vertical-align:bottom;min-width:3.5rem;max-width:9rem}
td.wrap{white-space:normal;min-width:4.5rem}.wrap{text-align:left}.nw{white-space:nowrap}
table.wide{font-size:.74rem}table.wide td,table.wide th{padding:.2rem .3rem}table.wide th{min-width:2.5rem}td{vertical-align:top}
td:first-child,th:first-child{text-align:left;position:sticky;left:0;z-index:1;box-shadow:1px 0 0 #bbb}
th:first-child{background:#f4f4f4}tr.best td{background:#eaf7ea;font-weight:600}
.note{background:#f7f7ff;border-left:4px solid #1f77b4;padding:.6rem 1rem}.ok{color:#2ca02c}.miss{color:#d62728}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.8rem;color:#666}
code{background:#f4f4f4;padding:0 .2rem}.small{font-size:.8rem;color:#555}
"""

SCRIPT = ("window.addEventListener('load',function(){var im=Array.prototype.slice.call(document.images);"
          "var ok=im.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;"
          "document.body.setAttribute('data-images-ok',ok+'/'+im.length);"
          "var wide=Array.prototype.filter.call(document.querySelectorAll('.table'),function(t){"
          "return t.scrollWidth>t.clientWidth;}).length;"
          "document.body.setAttribute('data-layout',document.documentElement.scrollWidth+'/'+window.innerWidth+'/'+wide);});")


WRAP_AT = 18  # a longer cell of words may wrap (verdicts, settings, notes); figures (`2.38x [2.30-2.45]`) never do
WIDE = 12  # a table of more columns is set smaller


def _wraps(text: str) -> bool:
    return len(text) > WRAP_AT and " " in text and re.search("[A-Za-z]{3}", text) is not None


def _cell(text: str, header: str) -> str:
    """A cell's HTML: verdicts coloured; in a cell that may wrap, each word kept whole (`baseline-int8` never breaks
    at its hyphen, only at spaces)."""
    words = [f'<span class="nw">{w}</span>' if "-" in w else w for w in html.escape(text).split(" ")]
    joined = " ".join(words)
    if header == "goals":
        return joined.replace(" ok", ' <span class="ok">ok</span>').replace(" MISS", ' <span class="miss">MISS</span>')
    return joined


def _table(header: list[str], rows: list[list[str]], best_rows: set[int] | None = None) -> str:
    """A table that fits the window: headers wrap, cells of words wrap (between words), figures stay on one line, a
    table of many columns is set smaller; one still wider than the page scrolls sideways inside its own box, with
    the first column (the stage) kept in view."""
    wrap = [any(_wraps(row[j]) for row in rows if j < len(row)) for j in range(len(header))]
    head = "".join(f"<th{' class=wrap' if w else ''}>{html.escape(h)}</th>" for h, w in zip(header, wrap, strict=True))
    body = []
    for i, row in enumerate(rows):
        cls = ' class="best"' if best_rows and i in best_rows else ""
        cells = "".join(f"<td{' class=wrap' if w else ''}>{_cell(c, h)}</td>"
                        for h, c, w in zip(header, row, wrap, strict=False))
        body.append(f"<tr{cls}>{cells}</tr>")
    wide = ' class="wide"' if len(header) > WIDE else ""
    return (f'<div class="table"><table{wide}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            "</div>")


def _md_inline(text: str) -> str:
    """Escape, then turn `code` spans into <code> and **bold** (outside code) into <b>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", p)
                   for i, p in enumerate(parts))


def result_box(text: str) -> str:
    """The page's Result box: the one-paragraph answer (Markdown inline: `code`, **bold**)."""
    return f'<p class="note"><b>Result.</b> {_md_inline(text)}</p>'


def _page(results: dict, parts: list[str], title: str | None = None) -> str:
    """The environment paragraph, then the whole self-contained page around `parts`."""
    env = results.get("environment") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
    parts = parts + [f"<h2>Environment</h2><p class=small>{html.escape(str(env.get('cpu', '?')))} (flags: "
                     f"{html.escape(', '.join(env.get('cpu_flags') or []) or '-')}), {render._threads(env)}, "
                     f"Python {html.escape(str(env.get('python', '?')))}; {html.escape(versions)}. Created "
                     f"{html.escape(str(results.get('created', '?')))}.</p>"]
    title = html.escape(title or f"compress report: {results['recipe']}")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head><body>{''.join(parts)}<script>{SCRIPT}</script></body></html>\n")


def _header(results: dict) -> list[str]:
    summary = results.get("summary") or {}
    parts = [f"<h1>Compression report: {html.escape(results['recipe'])}</h1>"]
    if results.get("description"):
        parts.append(f"<p>{_md_inline(results['description'])}</p>")
    if summary.get("note"):
        parts.append(result_box(summary["note"]))
    busy = render.busy_warning(results)
    if busy:
        parts.append(f'<p class="note"><b>Warning: timed on a busy machine.</b> {html.escape(busy)}</p>')
    return parts


def _figures(plots: list[tuple[str, str, bytes]]) -> list[str]:
    parts = ["<h2>Plots</h2>"]
    for _stem, title, png in plots:
        data64 = base64.b64encode(png).decode()
        parts.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data64}">'
                     f"<figcaption>{html.escape(title)}</figcaption></figure>")
    return parts


def report_html(results: dict, plots: list[tuple[str, str, bytes]]) -> str:
    """The whole page. `plots`: (stem, title, PNG bytes) from `report.plots.all_plots`."""
    summary = results.get("summary") or {}
    env = results.get("environment") or {}
    best = summary.get("best")
    parts = _header(results)
    ev = results.get("eval") or {}
    data = ev.get("data") or {}
    parts.append(f'<p class="small">Accuracy on <code>{html.escape(str(data.get("source")))}</code> split '
                 f'<code>{html.escape(str(data.get("split")))}</code> ({ev.get("examples", "?")} examples). '
                 f"p50 and speedup at {html.escape(render._shape(results))}, {render._threads(env)}. "
                 "Δ pt versus the teacher; ★ = best stage.</p>")
    if causal.is_causal_results(results):
        return _causal_html(results, plots)
    parts.append("<h2>Stages</h2>")
    best_rows = {i for i, s in enumerate(results["stages"]) if s["name"] == best}
    parts.append(_table(render.STAGE_COLUMNS, render.stage_rows(results), best_rows))
    if summary.get("comparisons"):
        parts.append("<h2>Best stage versus references</h2>")
        parts.append(_table(["best", "versus", "speedup", "accuracy Δ pt", "smaller"],
                            [[best, c["vs"], render._num(c["speedup"], "{:.2f}x"), render._pt(c["accuracy_drop"]),
                              render._num(c["size_ratio"], "{:.1f}x")] for c in summary["comparisons"]]))
    goals = results.get("goals") or {}
    if goals.get("max_accuracy_drop") is not None or goals.get("min_speedup") is not None:
        items = []
        if goals.get("max_accuracy_drop") is not None:
            items.append(f"accuracy at most {100 * goals['max_accuracy_drop']:.2f} pt below the teacher")
        if goals.get("min_speedup") is not None:
            items.append(f"speedup at least {goals['min_speedup']:.2f}x versus "
                         f"<code>{html.escape(goals.get('speedup_vs', 'teacher'))}</code>")
        met = [s["name"] for s in results["stages"][1:] if s.get("meets_goals")]
        parts.append("<h2>Goals</h2><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"
                     f"<p>Stages meeting every goal: {html.escape(', '.join(met) or 'none')}.</p>")
    parts += _figures(plots)
    parts.append("<h2>Latency</h2>")
    parts.append(_table(["stage", "backend", "device", "batch", "seq", "p50 ms", "p90 ms", "x teacher"],
                        render.latency_rows(results)))
    if results.get("pipeline"):
        parts.append("<h2>Pipeline</h2>")
        parts.append(_table(render.PIPELINE_COLUMNS, render.pipeline_rows(results)))
    parts.append("<h2>Stage details</h2>")
    for s in results["stages"]:
        scalars = render._scalars(s.get("pass_metrics"))
        detail = ", ".join(f"{html.escape(k)} = {html.escape(render._fmt(v))}" for k, v in scalars.items())
        how = (f"<code>{html.escape(s['pass'])}</code> from <code>{html.escape(str(s.get('from')))}</code>, "
               f"{render._num(s.get('seconds'), '{:.1f}')} s" if s.get("pass") else "given model")
        parts.append(f"<p><b>{html.escape(s['name'])}</b>: {how}. {detail}<br><span class=small>config "
                     f"<code>{html.escape(render._compact(s.get('config')))}</code>; path <code>{html.escape(str(s.get('path')))}"
                     "</code></span></p>")
    return _page(results, parts)


def _causal_html(results: dict, plots: list[tuple[str, str, bytes]]) -> str:
    """The causal-LM page: the same sections as report.md (perplexity, agreement, decode speed, memory)."""
    summary = results.get("summary") or {}
    best = summary.get("best")
    parts = _header(results)
    parts.append(f'<p class="small">{_md_inline(causal.explanation(results))}</p>')
    parts.append("<h2>Stages</h2>")
    best_rows = {i for i, s in enumerate(results["stages"]) if s["name"] == best}
    parts.append(_table(causal.STAGE_COLUMNS, causal.stage_rows(results), best_rows))
    header, rows = causal.domain_rows(results)
    if rows:
        parts.append("<h2>Perplexity by domain</h2>")
        parts.append(f'<p class="small">Per-document perplexity (Δ% vs the teacher) | bits per byte. '
                     f"{_md_inline(causal.domain_notes(results))}.</p>")
        parts.append(_table(header, rows))
    mix = causal.train_mix_rows(results)
    if mix:
        parts.append("<h2>Recovery data</h2>")
        parts.append(f'<p class="small">{_md_inline(render.TRAIN_MIX_NOTE)}</p>')
        parts.append(_table(causal.TRAIN_MIX_COLUMNS, mix))
    header, rows = causal.peer_rows(results)
    if rows:
        parts.append("<h2>Decode speed versus the peers</h2>")
        parts.append(f'<p class="small">{render.PEER_NOTE}</p>')
        parts.append(_table(header, rows))
    header, rows = causal.task_rows(results)
    if rows:
        parts.append("<h2>Zero-shot tasks</h2>")
        parts.append('<p class="small">Accuracy by log-likelihood of the answer choices (the lm-evaluation-harness '
                     "method), with a 95% Wilson interval.</p>")
        parts.append(_table(header, rows))
    if summary.get("comparisons"):
        parts.append("<h2>Best stage versus references</h2>")
        parts.append(_table(causal.COMPARE_COLUMNS, causal.compare_rows(results)))
    lines = causal.goal_lines(results)
    if lines:
        met = [s["name"] for s in results["stages"][1:] if s.get("meets_goals")]
        parts.append("<h2>Goals</h2><ul>" + "".join(f"<li>{_md_inline(i)}</li>" for i in lines) + "</ul>"
                     f"<p>Stages meeting every goal: {html.escape(', '.join(met) or 'none')}.</p>")
    parts += _figures(plots)
    frontier = causal.frontier_rows(results)
    if frontier and results.get("goals"):
        parts.append("<h2>Frontier</h2>")
        parts.append(f'<p class="small">{_md_inline(render.FRONTIER_NOTE)}</p>')
        parts.append(_table(causal.FRONTIER_COLUMNS, frontier))
    recovery = causal.recovery_rows(results)
    if recovery:
        parts.append("<h2>Pruning and recovery</h2>")
        parts.append(_table(causal.RECOVERY_COLUMNS, recovery))
    parts.append("<h2>Latency and memory</h2>")
    parts.append(_table(causal.LATENCY_COLUMNS, causal.latency_rows(results)))
    gen = causal.generation_rows(results)
    if gen:
        parts.append("<h2>Greedy agreement per prompt</h2>")
        parts.append(_table(["stage", "common prefix per prompt"], gen))
    if results.get("pipeline"):
        parts.append("<h2>Pipeline</h2>")
        parts.append(_table(render.PIPELINE_COLUMNS, render.pipeline_rows(results)))
    return _page(results, parts)

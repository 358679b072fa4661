"""Format built results (see `report.build`): Markdown, rich tables, the multi-run comparison. No computation."""

from __future__ import annotations

from compress.report import causal
from compress.report.intervals import number, with_ci
from compress.report.intervals import verdict as _verdict


def _pct(x) -> str:
    return "-" if x is None else number(100 * x)


def _pt(drop) -> str:
    """Accuracy change in points (a drop of 1% reads -1.00; no drop reads 0.00)."""
    return "-" if drop is None else number(-100 * drop, "{:+.2f}")


def _num(x, fmt="{:.2f}") -> str:
    return number(x, fmt)


def _threads(env: dict) -> str:
    n = env.get("threads", "?")
    return f"{n} thread" + ("" if n == 1 else "s")


def _size(mb) -> str:
    if mb is None:
        return "-"
    return number(mb, "{:.1f}" if mb >= 10 else "{:.3g}")


def _shape(results: dict) -> str:
    p = results.get("primary")
    if not p:
        return "-"
    seq = f" s{p['seq_len']}" if _is_text(results) else ""
    return f"{p['device']} b{p['batch_size']}{seq}"


def _is_text(results: dict) -> bool:
    task = (results.get("recipe_config") or {}).get("task")
    if task:
        return task != "image-classification"
    return any(r["seq_len"] > 1 for s in results["stages"] for r in s.get("latency", []))


STAGE_COLUMNS = ["stage", "pass", "from", "backend", "accuracy %", "Δ pt", "agree %", "size MB", "params",
                 "p50 ms", "speedup", "goals"]


def stage_rows(results: dict) -> list[list[str]]:
    """One row of strings per stage, the columns of `STAGE_COLUMNS`."""
    best = (results.get("summary") or {}).get("best")
    rows = []
    for s in results["stages"]:
        teacher = s is results["stages"][0] and s["name"] != "teacher"
        name = s["name"] + (" (teacher)" if teacher else "") + (" (baseline)" if s.get("is_baseline") else "")
        name += " ★" if s["name"] == best else ""
        speed = with_ci(s.get("speedup"), s.get("speedup_ci95"), unit="x")
        rows.append([name, s.get("pass") or "-", s.get("from") or "-", s.get("backend", "-"), _pct(s.get("accuracy")),
                     _pt(s.get("accuracy_drop")), _pct((s.get("agreement") or {}).get("argmax_agreement")),
                     _size(s.get("size_mb")), f"{s['params']:,}", _num(s.get("p50_ms")), speed, _verdict(s)])
    return rows


def latency_rows(results: dict) -> list[list[str]]:
    """stage, backend, device, batch, seq, p50, p90, x teacher: every timed shape."""
    text = _is_text(results)
    rows = []
    for s in results["stages"]:
        for r in s.get("latency", []):
            rows.append([s["name"], r["backend"], r["device"], str(r["batch_size"]), str(r["seq_len"]) if text else "-",
                         _num(r["p50_ms"]), _num(r["p90_ms"]), _num(r.get("speedup_vs_teacher"), "{:.2f}x")])
    return rows


PIPELINE_COLUMNS = ["stage", "pass", "from", "seconds", "cached", "in report"]


def pipeline_rows(results: dict) -> list[list[str]]:
    """Every stage that ran, in order (including intermediates not shown in the stage table)."""
    return [[p["name"], p["pass"], p["from"], _num(p.get("seconds"), "{:.1f}"), "yes" if p.get("cached") else "no",
             "yes" if p.get("evaluated") else "no"] for p in results.get("pipeline") or []]


def md_table(header: list[str], rows: list[list]) -> str:
    """A markdown table; a `|` inside a cell (header included) is escaped so the columns stay aligned."""
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}


def _fmt(v) -> str:
    if isinstance(v, float):
        return number(v, "{:.6g}")
    return str(v)


def markdown(results: dict, plot_files: list[tuple[str, str]] | None = None) -> str:
    """The report as Markdown. `plot_files`: (file name, title) of PNGs written beside it."""
    if causal.is_causal_results(results):
        return _causal_markdown(results, plot_files)
    env = results.get("environment") or {}
    summary = results.get("summary") or {}
    out = _md_header(results)
    ev = results.get("eval") or {}
    data = ev.get("data") or {}
    out += [f"Accuracy on `{data.get('source')}` split `{data.get('split')}` ({ev.get('examples', '?')} examples); "
            f"agreement = argmax agreement with the teacher; p50 and speedup at {_shape(results)} "
            f"({_threads(env)}); Δ pt versus the teacher. ★ = best stage.", ""]
    out += ["## Stages", "", md_table(STAGE_COLUMNS, stage_rows(results)), ""]
    goals = results.get("goals")
    if goals and (goals.get("max_accuracy_drop") is not None or goals.get("min_speedup") is not None):
        out += ["## Goals", ""]
        if goals.get("max_accuracy_drop") is not None:
            out.append(f"- accuracy: at most {100 * goals['max_accuracy_drop']:.2f} pt below the teacher")
        if goals.get("min_speedup") is not None:
            out.append(f"- speedup: at least {goals['min_speedup']:.2f}x versus `{goals.get('speedup_vs', 'teacher')}` "
                       f"at {_shape(results)}")
        met = [s["name"] for s in results["stages"][1:] if s.get("meets_goals")]
        out += ["", f"Stages meeting every goal: {', '.join(f'`{m}`' for m in met) or 'none'}.", ""]
    if summary.get("comparisons"):
        out += ["## Best stage versus references", "",
                md_table(["best", "versus", "speedup", "accuracy Δ pt", "smaller"],
                          [[summary["best"], c["vs"], _num(c["speedup"], "{:.2f}x"), _pt(c["accuracy_drop"]),
                            _num(c["size_ratio"], "{:.1f}x")] for c in summary["comparisons"]]), ""]
    out += ["## Latency", "", md_table(["stage", "backend", "device", "batch", "seq", "p50 ms", "p90 ms", "x teacher"],
                                        latency_rows(results)), ""]
    for file, title in plot_files or []:
        out += [f"![{title}]({file})", ""]
    if results.get("pipeline"):
        out += ["## Pipeline", "", md_table(PIPELINE_COLUMNS, pipeline_rows(results)), ""]
    out += ["## Stage details", ""]
    for s in results["stages"]:
        bits = _stage_detail(s)
        agree = s.get("agreement") or {}
        bits += [f"Agreement with the teacher: argmax {_pct(agree.get('argmax_agreement'))} %, mean KL "
                 f"{_num(agree.get('mean_kl'), '{:.4g}')}; nonzero weights {_pct(s.get('nonzero_fraction'))} %, "
                 f"zipped {_num(s.get('zipped_mb'), '{:.1f}')} MB. Path: `{s.get('path')}`", ""]
        out += bits
    out += _environment(results)
    spec = results.get("latency_spec")
    if spec:
        out += [f"Latency protocol: {spec.get('warmup')} warm-up runs, {spec.get('iters')} timed runs per shape in "
                f"{spec.get('rounds')} round-robin rounds, one process per model.", ""]
    return "\n".join(out)


def _stage_detail(s: dict) -> list[str]:
    """A stage's heading, note, pass line and scalar pass metrics (both report kinds)."""
    bits = [f"### {s['name']}", ""]
    if s.get("note"):
        bits += [s["note"], ""]
    if s.get("pass"):
        cached = " (reused from the cache)" if s.get("cached") else ""
        bits += [f"`{s['pass']}` from `{s.get('from')}`, {_num(s.get('seconds'), '{:.1f}')} s{cached}. "
                 f"Config: `{_compact(s.get('config'))}`", ""]
    else:
        bits += [f"Model `{s.get('path')}`.", ""]
    scalars = _scalars(s.get("pass_metrics"))
    if scalars:
        bits += [", ".join(f"{k} = {_fmt(v)}" for k, v in scalars.items()), ""]
    return bits


def _environment(results: dict) -> list[str]:
    env = results.get("environment") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
    parent = env.get("env") or {}
    variables = "".join(f", {k}={v}" for k, v in parent.items() if k != "OMP_WAIT_POLICY")
    # The parent's OMP_WAIT_POLICY governs training and evaluation only: bench workers never inherit it.
    variables += (f"; training and evaluation ran with OMP_WAIT_POLICY={parent['OMP_WAIT_POLICY']}"
                  if "OMP_WAIT_POLICY" in parent else "; training and evaluation ran with OMP_WAIT_POLICY unset")
    policies = {row["backend"]: row["wait_policy"] for stage in results.get("stages") or []
                for row in stage.get("latency") or [] if row.get("wait_policy")}
    if policies:
        variables += ("; latency workers set their own policy (never the parent's): "
                      + "; ".join(f"{backend} {policy}" for backend, policy in sorted(policies.items())))
    return ["## Environment", "", f"{env.get('cpu', '?')} (flags: {', '.join(env.get('cpu_flags') or []) or '-'}), "
            f"{_threads(env)}{variables}. Python {env.get('python', '?')}; {versions}. "
            f"Created {results.get('created', '?')} from recipe `{results['recipe']}`; stage cache `{results.get('run_dir')}`.",
            ""]


def _md_header(results: dict) -> list[str]:
    summary = results.get("summary") or {}
    out = [f"# Compression report: {results['recipe']}", ""]
    if results.get("description"):
        out += [results["description"].strip(), ""]
    if summary.get("note"):
        out += [f"**Result.** {summary['note']}", ""]
    busy = busy_warning(results)
    if busy:
        out += [f"**Warning: timed on a busy machine.** {busy}", ""]
    return out


def busy_warning(results: dict) -> str | None:
    """Why the timings may be off, when the bench saw a loaded machine (load average or CPU steal per round)."""
    env = results.get("environment") or {}
    if not env.get("busy"):
        return None
    return (f"{env.get('busy_reason') or 'load above the bench threads'}; load average {env.get('load_before')} "
            f"before, {env.get('load_after')} after; ratios measured in the same rounds are still comparable, "
            f"absolute figures are not.")


TRAIN_MIX_NOTE = ("What the students were recovered on: every source of the training mix after the documents equal to an "
                  "eval text were dropped; tokens by the model's tokenizer (separators not counted). The mix is "
                  "shuffled before packing, so a student that sees part of it sees each source in proportion.")
FRONTIER_NOTE = ("The best decode speed at each quality level: every stage of this run that no other stage beats on "
                 "both decode speed and its worst per-domain perplexity increase, fastest first (task drop: teacher "
                 "accuracy minus the stage's, in points, with a 95% bootstrap interval paired by example).")
PEER_NOTE = ("Decode tokens/s of the stage (or peer runtime) over the peer's, timed in the same interleaved rounds: the median of the "
             "per-round ratios, with a 95% bootstrap interval over rounds.")


def _causal_markdown(results: dict, plot_files) -> str:
    summary = results.get("summary") or {}
    out = _md_header(results)
    out += [causal.explanation(results), ""]
    out += ["## Stages", "", md_table(causal.STAGE_COLUMNS, causal.stage_rows(results)), ""]
    header, rows = causal.domain_rows(results)
    if rows:
        out += ["## Perplexity by domain", "", f"Per-document perplexity (Δ% vs the teacher) | bits per byte. "
                f"{causal.domain_notes(results)}.", "", md_table(header, rows), ""]
    mix = causal.train_mix_rows(results)
    if mix:
        out += ["## Recovery data", "", TRAIN_MIX_NOTE, "", md_table(causal.TRAIN_MIX_COLUMNS, mix), ""]
    header, rows = causal.peer_rows(results)
    if rows:
        out += ["## Decode speed versus the peers", "", PEER_NOTE, "", md_table(header, rows), ""]
    header, rows = causal.task_rows(results)
    if rows:
        out += ["## Zero-shot tasks", "", "Accuracy by log-likelihood of the answer choices (the lm-evaluation-harness "
                "method), with a 95% Wilson interval.", "", md_table(header, rows), ""]
    lines = causal.goal_lines(results)
    if lines:
        met = [s["name"] for s in results["stages"][1:] if s.get("meets_goals")]
        out += ["## Goals", ""] + [f"- {line}" for line in lines]
        out += ["", f"Stages meeting every goal: {', '.join(f'`{m}`' for m in met) or 'none'}.", ""]
    if summary.get("comparisons"):
        out += ["## Best stage versus references", "", md_table(causal.COMPARE_COLUMNS, causal.compare_rows(results)), ""]
    frontier = causal.frontier_rows(results)
    if frontier and results.get("goals"):
        out += ["## Frontier", "", FRONTIER_NOTE, "", md_table(causal.FRONTIER_COLUMNS, frontier), ""]
    recovery = causal.recovery_rows(results)
    if recovery:
        out += ["## Pruning and recovery", "", "Students pruned from the teacher and trained back on the same token "
                "budget: token-level KD versus plain next-token cross-entropy (CE) where both were run.", "",
                md_table(causal.RECOVERY_COLUMNS, recovery), ""]
    out += ["## Latency and memory", "", md_table(causal.LATENCY_COLUMNS, causal.latency_rows(results)), ""]
    for file, title in plot_files or []:
        out += [f"![{title}]({file})", ""]
    gen = causal.generation_rows(results)
    if gen:
        out += ["## Greedy agreement per prompt", "", "Tokens identical to the teacher's continuation, per prompt:", "",
                md_table(["stage", "common prefix per prompt"], gen), ""]
    if results.get("pipeline"):
        out += ["## Pipeline", "", md_table(PIPELINE_COLUMNS, pipeline_rows(results)), ""]
    out += ["## Stage details", ""]
    for s in results["stages"]:
        out += _stage_detail(s) + [f"Path: `{s.get('path')}`", ""]
    out += _environment(results)
    spec = results.get("latency_spec")
    if spec:
        out += [f"Latency protocol: per shape and round {spec.get('causal_iters_per_round')} timed generations "
                f"(prefill + {spec.get('new_tokens')} greedy tokens) after {spec.get('causal_warmup')} untimed, "
                f"{spec.get('rounds')} round-robin rounds, one process per model.", ""]
    return "\n".join(out)


def _compact(config: dict | None) -> str:
    import json

    return json.dumps(config or {}, separators=(", ", ": "))


CLI_COLUMNS = ["stage", "pass", "backend", "accuracy %", "Δ pt", "size MB", "p50 ms", "speedup", "goals"]


def stage_table(results: dict):
    """The stages as a rich Table (the CLI prints it): the Markdown table without from/agree/params."""
    from rich.table import Table

    if causal.is_causal_results(results):
        table = Table(*causal.CLI_COLUMNS, title=f"{results['recipe']} (decode at {_shape(results)})")
        best = (results.get("summary") or {}).get("best")
        keep = [causal.STAGE_COLUMNS.index(c) for c in causal.CLI_COLUMNS]
        for s, row in zip(results["stages"], causal.stage_rows(results), strict=False):
            table.add_row(*[row[i] for i in keep], style="bold green" if s["name"] == best else None)
        return table
    table = Table(*CLI_COLUMNS, title=f"{results['recipe']} (p50 at {_shape(results)})")
    best = (results.get("summary") or {}).get("best")
    keep = [STAGE_COLUMNS.index(c) for c in CLI_COLUMNS]
    for s, row in zip(results["stages"], stage_rows(results), strict=False):
        table.add_row(*[row[i] for i in keep], style="bold green" if s["name"] == best else None)
    return table


COMPARE_COLUMNS = ["run", "stage", "backend", "accuracy %", "Δ pt", "size MB", "p50 ms", "shape", "speedup", "goals"]


def compare_rows(runs: list[dict]) -> list[list[str]]:
    """Rows of the multi-run comparison: every stage of every run, each against its own teacher."""
    rows = []
    for results in runs:
        for s in results["stages"]:
            rows.append([results["recipe"], s["name"], s.get("backend", "-"), _pct(s.get("accuracy")),
                         _pt(s.get("accuracy_drop")), _size(s.get("size_mb")), _num(s.get("p50_ms")),
                         _shape(results), _num(s.get("speedup"), "{:.2f}x"), _verdict(s)])
    return rows


def compare_markdown(runs: list[dict], dirs: list[str]) -> str:
    return "\n".join(["# Comparison of runs", "", "Runs: " + ", ".join(f"`{d}`" for d in dirs), "",
                      md_table(COMPARE_COLUMNS, compare_rows(runs)), ""])


def compare_table(runs: list[dict]):
    from rich.table import Table

    table = Table(*COMPARE_COLUMNS, title="Comparison of runs")
    for row in compare_rows(runs):
        table.add_row(*row)
    return table

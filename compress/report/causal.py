"""Reports of causal-LM runs: quality is perplexity (lower is better) with KL / top-1 / greedy agreement against
the teacher, speed is decode tokens per second with the KV cache (plus prefill throughput, time to first
token and peak memory). Same shape as the classifier report (`build` adds derived fields and a summary, the
renderers only format), so `compress report` rebuilds either kind. Pure data in, data out."""

from __future__ import annotations

import copy

from compress.report.intervals import crosses, number, speedup_ci, with_ci
from compress.report.intervals import verdict as _verdict

CAUSAL_TASK = "text-generation"


def is_causal_results(results: dict) -> bool:
    return (results.get("eval") or {}).get("task") == CAUSAL_TASK or any(
        s.get("task") == CAUSAL_TASK for s in results.get("stages", []))


def _row(stage: dict, device: str, batch: int, seq: int) -> dict | None:
    for r in stage.get("latency") or []:
        if (r["device"], r["batch_size"], r["seq_len"]) == (device, batch, seq):
            return r
    return None


def _pareto(points: list[tuple[float, float]]) -> list[bool]:
    """(decode tok/s, perplexity): True where no other point is at least as fast and as good, better in one."""
    flags = []
    for i, (speed, ppl) in enumerate(points):
        dominated = any(s2 >= speed and p2 <= ppl and (s2 > speed or p2 < ppl)
                        for j, (s2, p2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def build(results: dict) -> dict:
    """Per stage: `ppl_increase` (stage / teacher perplexity - 1), headline `p50_ms` (decode ms/token at the primary
    shape), `decode_tokens_per_s`, `ttft_ms`, `prefill_tokens_per_s` (primary prompt length) and at 512,
    `peak_rss_mb`, `speedup` (decode, vs the teacher or `goals.speedup_vs`), `pareto`, verdicts; and a summary."""
    out = copy.deepcopy(results)
    stages, goals = out["stages"], out.get("goals") or {}
    teacher = stages[0]
    primary = out.get("primary") or {"device": "cpu", "batch_size": 1, "seq_len": 128}
    dev, b, s = primary["device"], primary["batch_size"], primary["seq_len"]
    by_name = {st["name"]: st for st in stages}
    ref = by_name.get(goals.get("speedup_vs") or "teacher", teacher)
    ref_row = _row(ref, dev, b, s)
    t_ppl = teacher.get("perplexity")
    t_domains = (teacher.get("metrics") or {}).get("domains") or {}
    t_tasks = (teacher.get("metrics") or {}).get("tasks") or {}
    for st in stages:
        ppl = st.get("perplexity")
        st["ppl_increase"] = None if ppl is None or not t_ppl else round(ppl / t_ppl - 1, 6)
        # every eval domain, and the worst of them: the perplexity goal holds on each domain, not only the first
        mine = (st.get("metrics") or {}).get("domains") or {}
        st["ppl_increase_domains"] = {n: round(d["perplexity"] / t_domains[n]["perplexity"] - 1, 6)
                                      for n, d in mine.items()
                                      if d.get("perplexity") and (t_domains.get(n) or {}).get("perplexity")}
        st["ppl_increase_worst"] = max(st["ppl_increase_domains"].values(), default=st["ppl_increase"])
        tasks = (st.get("metrics") or {}).get("tasks") or {}
        st["task_drops"] = {n: round(t_tasks[n]["accuracy"] - r["accuracy"], 6) for n, r in tasks.items()
                            if r.get("accuracy") is not None and (t_tasks.get(n) or {}).get("accuracy") is not None}
        st["task_drops_ci95"] = _task_drop_intervals(t_tasks, tasks) if st is not teacher else {}
        st["accuracy"], st["accuracy_drop"] = None, None  # not a classifier: the report reads perplexity
        row = _row(st, dev, b, s)
        st["p50_ms"] = row["p50_ms"] if row else None
        st["decode_tokens_per_s"] = row.get("decode_tokens_per_s") if row else None
        st["ttft_ms"] = row.get("ttft_ms") if row else None
        st["decode_tokens_per_s_ci95"] = row.get("decode_tokens_per_s_ci95") if row else None
        st["ttft_ms_ci95"] = row.get("ttft_ms_ci95") if row else None
        st["prefill_tokens_per_s"] = row.get("prefill_tokens_per_s") if row else None
        long = _row(st, dev, b, 512)
        st["prefill_tokens_per_s_512"] = long.get("prefill_tokens_per_s") if long else None
        st["peak_rss_mb"] = row.get("peak_rss_mb") if row else None
        st["speedup"] = round(ref_row["p50_ms"] / row["p50_ms"], 3) if row and ref_row else None
        st["speedup_ci95"] = speedup_ci(ref_row, row)
        st["size_ratio"] = round(teacher["size_mb"] / st["size_mb"], 3) if st.get("size_mb") else None
        for r in st.get("latency", []):
            t = _row(teacher, r["device"], r["batch_size"], r["seq_len"])
            r["speedup_vs_teacher"] = round(t["p50_ms"] / r["p50_ms"], 3) if t else None
        verdicts = {}
        if st is not teacher:
            if goals.get("max_perplexity_increase") is not None:
                verdicts["perplexity"] = (None if st["ppl_increase_worst"] is None
                                          else st["ppl_increase_worst"] <= goals["max_perplexity_increase"] + 1e-12)
            if goals.get("max_task_drop") is not None:
                verdicts["tasks"] = (None if not st["task_drops"] or len(st["task_drops"]) < len(t_tasks) else
                                     max(st["task_drops"].values()) <= goals["max_task_drop"] + 1e-12)
            if goals.get("min_speedup") is not None:
                verdicts["speedup"] = None if st["speedup"] is None else st["speedup"] >= goals["min_speedup"]
        st["uncertain"] = crosses(st.get("speedup_ci95"), goals.get("min_speedup")) if st is not teacher else []
        if st is not teacher and goals.get("max_task_drop") is not None and any(
                lo <= goals["max_task_drop"] < hi for lo, hi in st["task_drops_ci95"].values()):
            st["uncertain"] = st["uncertain"] + ["tasks"]
        st["verdicts"] = verdicts
        st["meets_goals"] = all(v is True for v in verdicts.values()) if verdicts else None
    _same_precision(stages, dev, b, s)
    timed = [st for st in stages if st.get("perplexity") is not None and st.get("decode_tokens_per_s")]
    for st, flag in zip(timed, _pareto([(st["decode_tokens_per_s"], st["perplexity"]) for st in timed]), strict=True):
        st["pareto"] = flag
    out["summary"] = summarize(out)
    return out


def _task_drop_intervals(teacher_tasks: dict, tasks: dict) -> dict[str, list[float]]:
    """Per task, the 95% interval of the teacher-minus-stage accuracy, paired by example (`paired_difference_ci`);
    only where both kept their per-example answers (evaluations cached before they did have none)."""
    from compress.core.stats import paired_difference_ci

    out = {}
    for name, r in tasks.items():
        ref = (teacher_tasks.get(name) or {}).get("correct")
        if ref and r.get("correct") and len(ref) == len(r["correct"]):
            _, lo, hi = paired_difference_ci(ref, r["correct"])
            out[name] = [round(lo, 6), round(hi, 6)]
    return out


PRECISIONS = ("int8", "int4")


def precision(stage: dict) -> str:
    """int8 / int4 / fp32 of a stage's weights: its name's suffix (`...-int8`), else its quantize config."""
    for p in PRECISIONS:
        if stage["name"].endswith(f"-{p}") or stage["name"] == p:
            return p
    config = stage.get("config") or {}
    if stage.get("pass") == "quantize_ort":
        return "int4" if config.get("mode") == "int4" or config.get("bits") == 4 else "int8"
    return "fp32"


def _same_precision(stages: list[dict], dev: str, b: int, s: int) -> None:
    """Each stage's decode speedup over the baseline of its precision (`student-int8` vs the int8 baseline):
    what model compression adds on top of quantization alone."""
    baselines = {precision(st): st for st in stages if st.get("is_baseline")}
    for st in stages:
        st["precision"] = precision(st)
        base = baselines.get(st["precision"])
        st["same_precision_baseline"], st["speedup_vs_same_precision"] = None, None
        if base is None or base is st:
            continue
        row, ref = _row(st, dev, b, s), _row(base, dev, b, s)
        st["same_precision_baseline"] = base["name"]
        if row and ref:
            st["speedup_vs_same_precision"] = round(ref["p50_ms"] / row["p50_ms"], 3)


def best_stage(results: dict) -> dict | None:
    """Among compressed stages (not teacher, not baselines): the fastest meeting every goal, else the fastest
    meeting the perplexity goal, else (no goals) the fastest on the Pareto front, else the lowest perplexity."""
    pool = [s for s in results["stages"][1:] if not s.get("is_baseline") and not s.get("is_peer")
            and s.get("perplexity") is not None]
    timed = [s for s in pool if s.get("p50_ms")]
    for ok in (lambda s: s.get("meets_goals") is True, lambda s: s.get("verdicts", {}).get("perplexity") is True):
        chosen = [s for s in timed if ok(s)]
        if chosen:
            return min(chosen, key=lambda s: s["p50_ms"])
    if not results.get("goals") and timed:
        front = [s for s in timed if s.get("pareto")] or timed
        return min(front, key=lambda s: s["p50_ms"])
    return min(pool, key=lambda s: s["perplexity"]) if pool else None


def summarize(results: dict) -> dict:
    stages = results["stages"]
    best = best_stage(results)
    summary: dict = {"best": best["name"] if best else None, "comparisons": [],
                     "pareto": [s["name"] for s in stages if s.get("pareto")]}
    if best is None:
        summary["note"] = "No compressed stage was evaluated."
        return summary
    parts = []
    for other in [stages[0]] + [s for s in stages if s.get("is_baseline")]:
        speed = round(other["p50_ms"] / best["p50_ms"], 3) if best.get("p50_ms") and other.get("p50_ms") else None
        delta = round(best["perplexity"] / other["perplexity"] - 1, 6) if other.get("perplexity") else None
        size = round(other["size_mb"] / best["size_mb"], 3) if best.get("size_mb") else None
        summary["comparisons"].append({"vs": other["name"], "speedup": speed, "ppl_increase": delta, "size_ratio": size})
        label = f"the teacher `{other['name']}` ({other.get('backend')})" if other is stages[0] else f"`{other['name']}`"
        speed_text = "decode speed not measured" if speed is None else f"decodes {speed:.2f}x as fast as {label}"
        parts.append(f"{speed_text}, perplexity {best['perplexity']:.3f} vs {other['perplexity']:.3f} "
                     f"({number(100 * delta, '{:+.2f}')}%), {size:.1f}x smaller" if delta is not None and size else speed_text)
    if best.get("speedup_vs_same_precision") is not None:
        summary["same_precision"] = {"vs": best["same_precision_baseline"], "speedup": best["speedup_vs_same_precision"]}
        parts.append(f"against the baseline of its own precision (`{best['same_precision_baseline']}`) it decodes "
                     f"{best['speedup_vs_same_precision']:.2f}x as fast")
    shape = results.get("primary") or {}
    where = f"{shape.get('device', 'cpu')}, batch {shape.get('batch_size')}, prompt {shape.get('seq_len')}"
    verdict = ""
    if best.get("verdicts"):
        verdict = " It meets every goal." if best.get("meets_goals") else " It misses a goal (see Goals)."
    summary["note"] = (f"Best stage `{best['name']}` ({best.get('backend')}, {where}, "
                       f"{best.get('decode_tokens_per_s') or 0:.1f} decode tokens/s): " + "; ".join(parts) + "." + verdict)
    return summary


# --- tables (strings; Markdown, HTML and the CLI share them) --------------------------------------------------

STAGE_COLUMNS = ["stage", "pass", "from", "backend", "perplexity", "Δ ppl %", "KL", "top-1 %", "greedy prefix",
                 "size MB", "params", "decode tok/s", "TTFT ms", "speedup", "x same precision", "goals"]
RECOVERY_COLUMNS = ["stage", "pruned", "params", "objective", "teacher", "tokens seen", "train s", "tok/s",
                    "held-out ppl before", "after", "eval ppl"]
CLI_COLUMNS = ["stage", "backend", "perplexity", "Δ ppl %", "KL", "size MB", "decode tok/s", "speedup", "goals"]
LATENCY_COLUMNS = ["stage", "backend", "device", "batch", "prompt", "prefill tok/s", "TTFT ms", "decode tok/s",
                   "ms/token p50", "p90", "peak RSS MB", "x teacher"]
COMPARE_COLUMNS = ["best", "versus", "decode speedup", "Δ ppl %", "smaller"]


def _f(x, fmt="{:.2f}") -> str:
    return number(x, fmt)


def _size(mb) -> str:
    return "-" if mb is None else number(mb, "{:.1f}" if mb >= 10 else "{:.3g}")


def stage_rows(results: dict) -> list[list[str]]:
    best = (results.get("summary") or {}).get("best")
    rows = []
    for s in results["stages"]:
        name = s["name"] + (" (teacher)" if s is results["stages"][0] and s["name"] != "teacher" else "")
        name += (" (baseline)" if s.get("is_baseline") else "") + (" (peer)" if s.get("is_peer") else "")
        name += " ★" if s["name"] == best else ""
        a = s.get("agreement") or {}
        rows.append([name, s.get("pass") or "-", s.get("from") or "-", s.get("backend", "-"), _f(s.get("perplexity"), "{:.3f}"),
                     _f(None if s.get("ppl_increase") is None else 100 * s["ppl_increase"], "{:+.2f}"),
                     _f(a.get("kl"), "{:.4f}"), _f(None if a.get("top1_agreement") is None else 100 * a["top1_agreement"]),
                     _f(a.get("greedy_prefix"), "{:.1f}"), _size(s.get("size_mb")), f"{s.get('params') or 0:,}",
                     with_ci(s.get("decode_tokens_per_s"), s.get("decode_tokens_per_s_ci95"), "{:.1f}"),
                     with_ci(s.get("ttft_ms"), s.get("ttft_ms_ci95"), "{:.1f}"),
                     with_ci(s.get("speedup"), s.get("speedup_ci95"), "{:.2f}", "x"),
                     (_f(s.get("speedup_vs_same_precision"), "{:.2f}x") + f" ({s['same_precision_baseline']})"
                      if s.get("speedup_vs_same_precision") is not None else "-"), _verdict(s)])
    return rows


_PRUNED = {"layers": ("layers", "layers_before", "layers_after"), "neurons": ("FFN", "neurons_before", "neurons_after"),
           "heads": ("KV groups", "kv_groups_before", "kv_groups_after")}


def _pruning_chain(steps: dict, name: str) -> str:
    """The decoder edits along stage `name`'s `from` chain, first to last (no-ops left out): a student pruned in
    one stage and trained in another (or pruned twice) reads as one row."""
    edits = []
    while name in steps:
        m = steps[name].get("pass_metrics") or {}
        dec = m.get("decoder")
        if dec and dec.get("unit") in _PRUNED:
            label, before, after = _PRUNED[dec["unit"]]
            if dec.get(before) != dec.get(after):
                edits.append(f"{label} {dec.get(before)}→{dec.get(after)}")
        name = steps[name].get("from")
    return ", ".join(reversed(edits))


def recovery_rows(results: dict) -> list[list[str]]:
    """Every pruned-and-trained stage (recovery inside `prune_structured`, or a `distill` stage whose input was
    pruned): what was removed, the training objective (KD or plain CE), its token budget and wall time, held-out
    perplexity before and after, and the report's perplexity: the KD-versus-CE ablation reads off this table."""
    evals = {s["name"]: s for s in results["stages"]}
    steps = {step["name"]: step for step in results.get("pipeline") or []}
    rows = []
    for name, step in steps.items():
        m = step.get("pass_metrics") or {}
        rec = _recovery(step)
        pruned = _pruning_chain(steps, name)
        if not rec or not pruned:
            continue
        objective = (f"KD α={rec.get('alpha')} T={rec.get('temperature'):g}" if rec.get("objective") == "kd"
                     else "CE (next token)")
        stage = evals.get(name) or {}
        rows.append([name, pruned, f"{stage.get('params') or m.get('params_after') or 0:,}", objective, rec.get("teacher_logits") or "-",
                     _tokens_seen(rec), _train_seconds(rec), _f(rec.get("tokens_per_s"), "{:.0f}"),
                     _f(rec.get("heldout_perplexity_before"), "{:.2f}"), _f(rec.get("heldout_perplexity_after"), "{:.2f}"),
                     _f(stage.get("perplexity"), "{:.3f}")])
    return rows


def _train_seconds(rec: dict) -> str:
    """Wall time of the whole training; a run resumed from a checkpoint that did not record its time gives the
    last segment's, with the steps it covers."""
    if rec.get("seconds_total") is not None:
        return _f(rec["seconds_total"], "{:.0f}")
    if rec.get("resumed_from_step"):
        return f"{_f(rec.get('seconds'), '{:.0f}')} (steps {rec['resumed_from_step']}-{rec.get('steps', '?')})"
    return _f(rec.get("seconds"), "{:.0f}")


def _tokens_seen(rec: dict) -> str:
    """Tokens the kept checkpoint saw (of the run's budget); older results only know the budget."""
    if rec.get("tokens_seen") is None:
        return f"{rec.get('token_budget') or 0:,} (budget)"
    return f"{rec['tokens_seen']:,} of {rec.get('token_budget') or 0:,}"


def latency_rows(results: dict) -> list[list[str]]:
    rows = []
    for s in results["stages"]:
        for r in s.get("latency", []):
            backend = r["backend"] + (f" ({r['loop']})" if r.get("loop") else "")  # the decode loop that was timed
            rows.append([s["name"], backend, r["device"], str(r["batch_size"]), str(r["seq_len"]),
                         _f(r.get("prefill_tokens_per_s"), "{:.0f}"), _f(r.get("ttft_ms"), "{:.1f}"),
                         _f(r.get("decode_tokens_per_s"), "{:.1f}"), _f(r.get("p50_ms")), _f(r.get("p90_ms")),
                         _f(r.get("peak_rss_mb"), "{:.0f}"), _f(r.get("speedup_vs_teacher"), "{:.2f}x")])
    return rows


def compare_rows(results: dict) -> list[list[str]]:
    summary = results.get("summary") or {}
    return [[summary.get("best") or "-", c["vs"], _f(c["speedup"], "{:.2f}x"),
             _f(None if c["ppl_increase"] is None else 100 * c["ppl_increase"], "{:+.2f}"), _f(c["size_ratio"], "{:.1f}x")]
            for c in summary.get("comparisons", [])]


def explanation(results: dict) -> str:
    ev = results.get("eval") or {}
    data = ev.get("data") or {}
    env = results.get("environment") or {}
    shape = results.get("primary") or {}
    if ev.get("protocol") == "documents":
        first = next(iter(ev.get("domains") or {}), "-")
        return (f"Perplexity on domain `{first}` (first of the domains below): each document scored on its own, the "
                f"lm-evaluation-harness way (separator id {ev.get('separator_id')} as context only, rolling windows "
                f"of {ev.get('window')} tokens, token-weighted); KL = mean per-token KL(teacher ‖ stage) on the same "
                f"targets; top-1 = next-token agreement with the teacher; greedy prefix = mean common prefix (of "
                f"{ev.get('new_tokens')}) of greedy continuations of {ev.get('prompts')} prompts (instruct models: "
                f"through the chat template). Decode tok/s, TTFT and speedup at {shape.get('device')} batch "
                f"{shape.get('batch_size')}, prompt {shape.get('seq_len')}, {env.get('threads')} threads, medians over "
                "interleaved rounds with their 95% interval in brackets: a prefill of the prompt, then greedy tokens "
                f"with the KV cache; speedup = `{(results.get('goals') or {}).get('speedup_vs') or 'teacher'}` "
                "decode ms/token / stage decode ms/token. ★ = best stage.")
    return ("**Measured under the old protocol** (issue 23): texts packed into blocks joined with the tokenizer's EOS, "
            "which the GGUF conversion had set to `<|im_start|>` (a chat-role opener the teacher pays ~10 nats for), "
            "timings as p50 of a few samples with no interval, and peak memory inherited from the parent process; "
            "the figures are not comparable with reports on the per-document protocol. "
            f"Perplexity on `{data.get('source')}` split `{data.get('split')}` field `{data.get('text_field', 'text')}` "
            f"(raw text, {ev.get('max_blocks')} blocks of {ev.get('block_size')} tokens, token-weighted); KL = mean "
            f"per-token KL(teacher ‖ stage) on the same tokens; top-1 = next-token agreement with the teacher; greedy "
            f"prefix = mean common prefix (of {ev.get('new_tokens')}) of greedy continuations of {ev.get('prompts')} fixed "
            f"prompts. Decode tok/s, TTFT and speedup at {shape.get('device')} batch {shape.get('batch_size')}, prompt "
            f"{shape.get('seq_len')}, {env.get('threads')} threads: a prefill of the prompt, then greedy tokens with the "
            "KV cache; speedup = teacher decode ms/token / stage decode ms/token. ★ = best stage.")


def peer_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Decode speed of each stage against each peer runtime timed in the same rounds (primary shape): the median of
    per-round ratios with its 95% bootstrap interval, e.g. `1.31x [1.21-1.35]`."""
    from compress.core.stats import ratio_ci

    shape = results.get("primary") or {}

    def row_of(stage: dict) -> dict | None:
        row = _row(stage, shape.get("device", "cpu"), shape.get("batch_size", 1), shape.get("seq_len"))
        return row if row and len(row.get("p50_ms_rounds") or []) >= 2 else None

    peers = [(s["name"], row_of(s)) for s in results["stages"] if s.get("is_peer")]
    peers = [(name, row) for name, row in peers if row]
    if not peers:
        return [], []
    rows = []
    for st in results["stages"]:  # peers too: how the runtimes compare with each other comes from the same rounds
        mine = row_of(st)
        if mine is None:
            continue
        cells = [st["name"]]
        for _, peer in peers:
            if len(peer["p50_ms_rounds"]) != len(mine["p50_ms_rounds"]):
                cells.append("-")
                continue
            median, lo, hi = ratio_ci(peer["p50_ms_rounds"], mine["p50_ms_rounds"])
            cells.append(f"{median:.2f}x [{lo:.2f}-{hi:.2f}]")
        rows.append(cells)
    return ["stage"] + [f"x {name}" for name, _ in peers], rows


def domain_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Per stage and eval domain: perplexity (Δ% vs the teacher) and bits per byte. Where the run trained, a domain
    whose source is in the training data is marked in-domain and every other one out-of-domain."""
    ev = results.get("eval") or {}
    domains = ev.get("domains") or {}
    if not domains:
        return [], []
    trained = bool((results.get("data") or {}).get("train_mix")) or any(d.get("trained_on") for d in domains.values())
    header = ["stage"] + [f"{name}{(' (in-domain)' if d.get('trained_on') else ' (out-of-domain)') if trained else ''}"
                          " ppl | bpb" for name, d in domains.items()]
    teacher = (results["stages"][0].get("metrics") or {}).get("domains") or {}
    rows = []
    for st in results["stages"]:
        mine = (st.get("metrics") or {}).get("domains") or {}
        cells = [st["name"]]
        for name in domains:
            d, t = mine.get(name) or {}, teacher.get(name) or {}
            if d.get("perplexity") is None:
                cells.append("-")
                continue
            delta = f" ({number(100 * (d['perplexity'] / t['perplexity'] - 1), '{:+.1f}')}%)" if t.get("perplexity") and st is not results["stages"][0] else ""
            cells.append(f"{number(d['perplexity'])}{delta} | {number(d.get('bits_per_byte', 0), '{:.3f}')}")
        rows.append(cells)
    return header, rows


TRAIN_MIX_COLUMNS = ["source", "licence", "documents", "dropped (in an eval set)", "characters", "tokens", "share",
                     "≈ tokens per student"]


def train_mix_rows(results: dict) -> list[list[str]]:
    """The recovery-training mix (results.json `data.train_mix`): per source its licence, documents kept, documents
    dropped as duplicates of an eval text, characters and tokens; its share of the mix's tokens, and the tokens a
    student recovered on `budget` tokens sees of it in expectation (the mix is shuffled before packing, so any
    prefix samples each source in proportion). A total row closes the table."""
    mix = (results.get("data") or {}).get("train_mix") or []
    if not mix:
        return []
    budgets = [r.get("tokens_seen") or r.get("token_budget") or 0
               for r in map(_recovery, results.get("pipeline") or []) if r]
    budget = max(budgets, default=0)
    total = sum(r.get("tokens") or 0 for r in mix)
    rows = []
    for r in mix + [{"name": "total", "documents": sum(r["documents"] for r in mix),
                     "dropped": sum(r["dropped"] for r in mix), "characters": sum(r["characters"] for r in mix),
                     "tokens": total if total else None}]:
        tokens = r.get("tokens")
        rows.append([r["name"], r.get("licence", ""), f"{r['documents']:,}",
                     f"{r['dropped']:,}", f"{r['characters']:,}", "-" if tokens is None else f"{tokens:,}",
                     f"{100 * tokens / total:.1f}%" if tokens is not None and total else "-",
                     f"{round(tokens * budget / total):,}" if tokens is not None and total and budget else "-"])
    return rows


def _recovery(step: dict) -> dict | None:
    """A pipeline step's recovery-training record: a pruning pass's `recovery`, or a `distill` stage's metrics."""
    m = step.get("pass_metrics") or {}
    return m.get("recovery") or (m if step.get("pass") == "distill" and m.get("objective") else None)


FRONTIER_COLUMNS = ["stage", "worst domain Δ ppl %", "Δ ppl % per domain", "largest task drop, points [95% CI]",
                    "decode tok/s", "speedup"]


def frontier_rows(results: dict) -> list[list[str]]:
    """The quality/speed frontier over the run's own stages (peers and the teacher left out): each stage that no
    other stage beats on both decode speed and worst-domain perplexity increase, fastest first, so each row is the
    best speed at its quality level. Speedup is against `goals.speedup_vs` (default the teacher)."""
    pool = [s for s in results["stages"][1:] if not s.get("is_peer") and s.get("decode_tokens_per_s")
            and s.get("ppl_increase_worst") is not None]
    flags = _pareto([(s["decode_tokens_per_s"], s["ppl_increase_worst"]) for s in pool])
    front = [s for s, on_front in zip(pool, flags, strict=True) if on_front]
    rows = []
    for s in sorted(front, key=lambda s: -s["decode_tokens_per_s"]):
        rows.append([s["name"], _f(100 * s["ppl_increase_worst"], "{:+.1f}"),
                     ", ".join(f"{n} {number(100 * v, '{:+.1f}')}" for n, v in (s.get("ppl_increase_domains") or {}).items()) or "-",
                     _largest_drop(s),
                     with_ci(s["decode_tokens_per_s"], s.get("decode_tokens_per_s_ci95"), "{:.1f}"),
                     with_ci(s.get("speedup"), s.get("speedup_ci95"), "{:.2f}", "x")])
    return rows


def _largest_drop(stage: dict) -> str:
    """`sst2 +3.2 [-1.1-7.6]`: the task with the largest zero-shot drop (points) and its paired interval."""
    drops = stage.get("task_drops") or {}
    if not drops:
        return "-"
    name = max(drops, key=drops.get)
    ci = (stage.get("task_drops_ci95") or {}).get(name)
    text = f"{name} {number(100 * drops[name], '{:+.1f}')}"
    return text + (f" [{number(100 * ci[0], '{:+.1f}')}, {number(100 * ci[1], '{:+.1f}')}]" if ci else "")


def domain_notes(results: dict) -> str:
    """Documents scored per domain and the duplicates of the training text that were dropped."""
    domains = (results.get("eval") or {}).get("domains") or {}
    return "; ".join(f"`{name}`: {d.get('documents')} documents from `{d.get('source')}`"
                     f"{' split `' + str(d.get('split')) + '`' if d.get('split') else ''}"
                     f"{', ' + str(d.get('dropped_duplicates')) + ' dropped as duplicates of training text' if d.get('dropped_duplicates') else ''}"
                     for name, d in domains.items())


def task_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Per stage and zero-shot task: accuracy [95% Wilson interval] over n examples."""
    tasks = (results.get("eval") or {}).get("tasks") or {}
    if not tasks:
        return [], []
    header = ["stage"] + [f"{t} acc % [95% CI] (n={info.get('examples')})" for t, info in tasks.items()]
    rows = []
    for st in results["stages"]:
        mine = (st.get("metrics") or {}).get("tasks") or {}
        cells = [st["name"]]
        for t in tasks:
            r = mine.get(t) or {}
            ci = (r.get("ci95") or {}).get("accuracy")
            cells.append("-" if r.get("accuracy") is None else
                         f"{100 * r['accuracy']:.1f}" + (f" [{100 * ci[0]:.1f}-{100 * ci[1]:.1f}]" if ci else ""))
        rows.append(cells)
    return header, rows


def goal_lines(results: dict) -> list[str]:
    goals = results.get("goals") or {}
    lines = []
    if goals.get("max_perplexity_increase") is not None:
        where = " on every eval domain" if (results.get("eval") or {}).get("domains") else ""
        lines.append(f"perplexity at most {100 * goals['max_perplexity_increase']:.1f}% above the teacher{where}")
    if goals.get("max_task_drop") is not None:
        lines.append(f"zero-shot accuracy at most {100 * goals['max_task_drop']:.1f} points below the teacher's on "
                     "each task")
    if goals.get("min_speedup") is not None:
        lines.append(f"decode at least {goals['min_speedup']:.2f}x as fast as `{goals.get('speedup_vs', 'teacher')}`")
    return lines


def generation_rows(results: dict, tokenizer_decode=None) -> list[list[str]]:
    """Per stage, greedy tokens shared with the teacher per prompt (how far each continuation stays identical)."""
    rows = []
    teacher_gen = (results["stages"][0].get("metrics") or {}).get("generations")
    if not teacher_gen:
        return rows
    for s in results["stages"]:
        gen = (s.get("metrics") or {}).get("generations")
        if not gen:
            continue
        prefixes = []
        for a, b in zip(gen, teacher_gen, strict=False):
            n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            prefixes.append(str(n))
        rows.append([s["name"], " ".join(prefixes)])
    return rows

"""Per-unit sensitivity and the accuracy-budget search: which units to keep fp32 so the accuracy drop fits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.models.artifacts import OnnxModel
from compress.techniques.quantize.config import QuantizeSettings
from compress.techniques.quantize.graph import unit_of
from compress.techniques.quantize.variants import Plan, make_variant

SENSITIVITY_BATCH = 64  # eval batch size while searching (dynamic padding per batch)


# --- scoring -------------------------------------------------------------------------------------------------------


@dataclass
class Scorer:
    """Scores candidate graphs on fixed eval batches against the fp32 reference logits (one scoring path)."""

    template: OnnxModel
    batches: list[dict]
    ref_logits: np.ndarray
    labels: np.ndarray | None

    def __call__(self, path: Path) -> dict:
        from compress.evaluation.accuracy import agreement, score
        from compress.runtime.predict import predict

        candidate = OnnxModel(path, self.template.task, self.template.tokenizer, self.template.input_names)
        logits, _ = predict(candidate, self.batches)
        out = score(logits, self.labels)
        out.update(agreement(logits, self.ref_logits))
        noise = float(((logits - self.ref_logits) ** 2).sum())
        # Identical outputs would be +inf dB; cap it so the metrics stay strict JSON (reports parse them).
        out["sqnr_db"] = min(float(10 * np.log10((self.ref_logits ** 2).sum() / noise)), 300.0) if noise > 0 else 300.0
        return out


def make_scorer(fp32: OnnxModel, examples, limit: int | None) -> tuple[Scorer, dict]:
    from compress.data.examples import iter_batches
    from compress.evaluation.accuracy import score
    from compress.runtime.predict import predict

    if limit is not None and limit < len(examples):
        examples = examples.subset(np.arange(limit))
    batches = list(iter_batches(fp32, examples, SENSITIVITY_BATCH))
    ref, labels = predict(fp32, batches)
    return Scorer(fp32, batches, ref, labels), score(ref, labels)


# --- the search -----------------------------------------------------------------------------------------------------


def sensitivity(plan: Plan, units: dict[str, list[str]], base_exclude: list[str], scorer: Scorer, fp32: dict,
                method: str, tmp: Path, all_quantized: dict, on_progress: Callable | None = None) -> list[dict]:
    """Per-unit sensitivity rows, most sensitive first.

    method "all_but_one": quantize everything except the unit; `score` = the output KL (to fp32 logits) that keeping
    the unit fp32 removes, `score_drop` = the accuracy drop it removes;
    method "alone": quantize only the unit; `score` = its KL, `score_drop` = its accuracy drop.
    Higher score = more sensitive either way. The rank is by `score` (continuous, unlike accuracy on a few
    hundred examples); accuracy, drop, mean_kl and sqnr_db are those of the variant measured.
    """
    rows = []
    everything = [n for names in units.values() for n in names]
    for i, (unit, names) in enumerate(units.items()):
        if method == "all_but_one":
            exclude = base_exclude + names
        else:
            exclude = base_exclude + [n for n in everything if n not in names]
        path = make_variant(plan, tmp / f"sens_{i}.onnx", exclude)
        m = scorer(path)
        path.unlink()
        row = {"unit": unit, "nodes": len(names), "accuracy": m.get("accuracy"), "drop": accuracy_drop(fp32, m),
               "mean_kl": m["mean_kl"], "sqnr_db": m["sqnr_db"], "argmax_agreement": m["argmax_agreement"]}
        if method == "all_but_one":
            row["score"] = all_quantized["mean_kl"] - m["mean_kl"]
            row["score_drop"] = (None if row["drop"] is None
                                 else round(accuracy_drop(fp32, all_quantized) - row["drop"], 6))
        else:
            row["score"], row["score_drop"] = m["mean_kl"], row["drop"]
        rows.append(row)
        if on_progress:
            on_progress("sensitivity", i + 1, len(units))
    rows.sort(key=lambda r: r["score"], reverse=True)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def accuracy_drop(fp32: dict, m: dict) -> float | None:
    if "accuracy" not in fp32 or "accuracy" not in m:
        return None
    return round(fp32["accuracy"] - m["accuracy"], 6)


def budget_search(plan: Plan, units: dict[str, list[str]], ranking: list[dict], base_exclude: list[str],
                  scorer: Scorer, fp32: dict, max_drop: float, max_units: int, tmp: Path,
                  first: dict, on_progress: Callable | None = None,
                  on_better: Callable[[Path, int], None] | None = None) -> tuple[list[dict], int]:
    """Keep the most sensitive units in fp32, one more per step, until the accuracy drop is within `max_drop`.

    Returns the steps (step 0 = nothing excluded beyond the user's list) and the index of the best step:
    the first within budget, else the smallest drop (ties: fewer exclusions).
    """
    steps = [{"step": 0, "kept_fp32": None, "excluded_units": [], **_short(fp32, first)}]
    excluded: list[str] = []
    for k, row in enumerate(ranking[:max_units], 1):
        if steps[-1]["drop"] <= max_drop:
            break
        excluded.append(row["unit"])
        nodes = base_exclude + [n for u in excluded for n in units[u]]
        path = make_variant(plan, tmp / f"budget_{k}.onnx", nodes)
        steps.append({"step": k, "kept_fp32": row["unit"], "excluded_units": list(excluded),
                      "path": str(path), **_short(fp32, scorer(path))})
        if on_better and steps[-1]["drop"] < min(s["drop"] for s in steps[:-1]):
            on_better(path, k)
        if on_progress:
            on_progress("budget", k, min(max_units, len(ranking)))
    within = [i for i, s in enumerate(steps) if s["drop"] <= max_drop]
    best = within[0] if within else min(range(len(steps)), key=lambda i: (steps[i]["drop"], i))
    return steps, best


def _short(fp32: dict, m: dict) -> dict:
    return {"accuracy": m.get("accuracy"), "drop": accuracy_drop(fp32, m), "mean_kl": m["mean_kl"],
            "sqnr_db": m["sqnr_db"]}


def search_units(cfg: QuantizeSettings, plan: Plan, graph, nodes, user_excluded, fp32, eval_examples, tmp, chosen,
                 progress, on_better):
    """Sensitivity table + budget search; returns the chosen graph and the metrics/exclusions it implies."""
    scorer, fp32_scores = make_scorer(fp32, eval_examples, cfg.eval_samples)
    first = scorer(chosen)
    by_name = {n.name: n for n in graph.node}
    units: dict[str, list[str]] = {}
    for name in nodes:
        if name not in user_excluded:
            units.setdefault(unit_of(by_name[name], cfg.granularity), []).append(name)
    table = sensitivity(plan, units, user_excluded, scorer, fp32_scores, cfg.sensitivity, tmp, first, progress)
    max_units = cfg.max_excluded_units if cfg.max_excluded_units is not None else max(1, len(units) // 2)
    steps, best = budget_search(plan, units, table, user_excluded, scorer, fp32_scores, cfg.max_drop, max_units,
                                tmp, first, progress, on_better)
    pick = steps[best]
    if best > 0:
        chosen = Path(pick["path"])
    ranks = {r["unit"]: r for r in table}
    excluded = [{"node": n, "unit": u, "reason": f"sensitivity rank {ranks[u]['rank']} of {len(table)} "
                 f"(score {ranks[u]['score']:.2e}); kept fp32 to meet --max-drop {cfg.max_drop}"}
                for u in pick["excluded_units"] for n in units[u]]
    for s in steps:
        s.pop("path", None)
    return chosen, {"accuracy_fp32": fp32_scores["accuracy"], "accuracy": pick["accuracy"], "drop": pick["drop"],
                    "sqnr_db": pick["sqnr_db"], "mean_kl": pick["mean_kl"], "max_drop": cfg.max_drop,
                    "budget_met": pick["drop"] <= cfg.max_drop, "kept_fp32_units": pick["excluded_units"],
                    "eval_examples": len(scorer.labels), "sensitivity_method": cfg.sensitivity,
                    "sensitivity": table, "search": steps, "excluded": excluded,
                    # {unit: number} series, most sensitive first, for the report's per-layer charts
                    "sensitivity_per_layer": {r["unit"]: r["score"] for r in table},
                    "sensitivity_drop_per_layer": {r["unit"]: r["score_drop"] for r in table}}

"""Build a run's results dict (the `results.json` data) from its stages' records, scores and timings."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import numpy as np

from compress.data.causal import PROMPTS
from compress.models.causal import CAUSAL_TASK
from compress.pipeline.recipe import Recipe, recipe_dict

SCHEMA_VERSION = 1  # results.json schema


def digest(obj: Any) -> str:
    """Short stable hash of JSON-able data."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def jsonable(obj: Any) -> Any:
    """Pass metrics as plain JSON data (numpy scalars and arrays, tuples, paths)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def stage_rows(recipe: Recipe, entries: list[dict], evals: list[dict], timing: dict, cached: set[str]) -> list[dict]:
    """One row per evaluated stage, teacher first: its record, its scores (see `score.score_stages`), its latency."""
    stages = []
    for entry, ev in zip(entries, evals, strict=False):
        record = entry["record"] or {}
        size = ev["size"]
        rows = [{k: v for k, v in r.items() if k != "model"}  # every figure the bench measured, per shape
                for r in timing["results"] if r["model"] == entry["name"]]
        stage = recipe.stage(entry["name"]) if record else None
        stages.append({
            "name": entry["name"], "pass": record.get("pass") or ("peer" if entry.get("peer") else None),
            "from": record.get("from"), "is_peer": bool(entry.get("peer")), "peer": entry.get("peer"),
            "note": stage.note if stage else None, "is_teacher": entry is entries[0],
            "is_baseline": entry["name"] in recipe.baselines, "config": record.get("config"),
            "seconds": record.get("seconds"), "cached": entry["name"] in cached, "pass_metrics": record.get("metrics", {}), "kind": ev["kind"],
            "backend": ev.get("backend") or ("onnxruntime" if ev["kind"] == "onnx" else "pytorch"), "path": ev["source"],
            "accuracy": ev["metrics"].get("accuracy"), "metrics": ev["metrics"],
            "agreement": ev["agreement"],
            **({"task": CAUSAL_TASK, "perplexity": ev["metrics"]["perplexity"]} if ev.get("causal") else {}),
            "size_mb": round(size["size_mb"], 3), "zipped_mb": _round(size["zipped_mb"], 3), "params": size["params"],
            "nonzero_fraction": _round(size["nonzero_fraction"], 4), "latency": rows,
        })
    return stages


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def lineage_rows(steps: list, records: dict[str, dict], cached: set[str]) -> list[dict]:
    """Every stage that ran, evaluated or not (per-layer tables come from here), from its record."""
    lineage = []
    for step in steps:
        record = records[step.name]
        lineage.append({"name": step.name, "pass": step.pass_type, "from": step.input, "seconds": record["seconds"],
                        "cached": step.name in cached, "evaluated": step.evaluate,
                        "config": record["config"], "pass_metrics": record["metrics"]})
    return lineage


def build(recipe: Recipe, *, stages: list[dict], lineage: list[dict], evals: list[dict], timing: dict,
          examples: int, run_dir: str, data: dict | None = None) -> dict:
    """The results of one run (before `report.build` adds verdicts); `timing["environment"]` is already filled.
    `data` is what the run trained on (`Runner.data_report`: `train_mix`, the per-source table of a mix)."""
    primary = recipe.eval.primary_shape()
    return {
        "schema": SCHEMA_VERSION, "recipe": recipe.name, "description": recipe.description,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": timing["environment"],
        "eval": {"data": recipe.data.spec("eval").model_dump(), "examples": examples,
                 "batch_size": recipe.eval.batch_size, "max_length": recipe.eval.max_length,
                 **(_causal_eval(recipe, evals[0]) if evals[0].get("causal") else {})},
        "latency_spec": timing.get("spec"), "primary": primary.model_dump() if primary else None,
        "goals": recipe.goals.model_dump() if recipe.goals else None,
        "teacher": stages[0]["name"], "baselines": list(recipe.baselines),
        "run_dir": run_dir, "recipe_config": recipe_dict(recipe), "stages": stages,
        "pipeline": lineage, "data": jsonable(data or {"train_mix": None}),
    }


def _causal_eval(recipe: Recipe, teacher_eval: dict) -> dict:
    """How decoders were scored: per-document windows, the separator, each domain (documents, duplicates dropped,
    trained on or not), the zero-shot tasks and the greedy prompts."""
    m = teacher_eval["metrics"]
    ev = recipe.eval
    domains = {name: {k: d.get(k) for k in ("source", "split", "documents", "tokens", "bytes", "dropped_duplicates",
                                            "trained_on")} for name, d in (m.get("domains") or {}).items()}
    return {"task": CAUSAL_TASK, "protocol": "documents", "window": ev.window, "separator_id": m.get("separator_id"),
            "domains": domains, "tasks": {t: {"examples": r.get("examples"), "source": r.get("source")}
                                          for t, r in (m.get("tasks") or {}).items()},
            "new_tokens": ev.new_tokens, "prompts": m.get("greedy_prompts") or len(PROMPTS),
            "prompts_file": ev.prompts}

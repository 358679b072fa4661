"""Run a recipe: apply each stage's pass (cached and resumable), score every stage, time them all in one bench.

Every stage's output lives in `runs/<recipe>/<stage>-<key>/`, where `key` hashes the stage's input key, the
teacher's key, the pass config, the data it may read and the seed. A stage folder is built under a temporary
name and renamed into place with `done.json` inside, so a folder either is complete or does not exist: after
a crash or Ctrl-C the next run reuses every finished stage, and changing one pass recomputes only that stage
and the stages downstream of it. Evaluation logits are cached beside each stage too; latency is measured
fresh by one interleaved `bench` call over all stages (one process per model, the project's only protocol).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import CompressError
from compress.core.paths import write_atomic
from compress.data.causal import PROMPTS
from compress.models.causal import CAUSAL_TASK, is_causal
from compress.pipeline.recipe import MODEL_REF, TEACHER_REF, Recipe, plan, recipe_dict

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the layout of a stage folder changes
SCHEMA_VERSION = 1  # results.json schema
DONE_FILE = "done.json"
# Training inside a stage checkpoints this often (unless its config says otherwise) and resumes after a crash.
STAGE_CHECKPOINT_EVERY = 50
RECORD_FILE = "record.json"

Event = Callable[..., None]  # on_event(kind, **info): "stage" (start/done), "eval", "bench"


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


class Runner:
    """State of one run: where stages live, loaded data, the teacher. Use `run(recipe)`."""

    def __init__(self, recipe: Recipe, runs_dir: Path, on_event: Event | None = None, progress: bool = True):
        self.recipe = recipe
        self.root = Path(runs_dir) / recipe.name
        self.emit = on_event or (lambda kind, **info: None)
        self.progress = progress
        self.steps = plan(recipe)
        self._examples: dict[str, Any] = {}
        self.reused: set[str] = set()  # stages taken from the cache in this run
        self.load_kwargs = {k: v for k, v in {"task": recipe.task, "num_labels": recipe.num_labels}.items() if v}
        self.keys = self._keys()
        self._teacher_model = None  # causal LMs: the reference every stage's KL is measured against
        self._teacher_generations = None  # ...and its greedy tokens, computed once

    # --- keys and folders --------------------------------------------------------------------------------------

    def _keys(self) -> dict[str, str]:
        """Cache key of the base model, the teacher and every stage (inputs hash into outputs: a chain)."""
        r = self.recipe
        keys = {MODEL_REF: digest({"model": r.model, **self.load_kwargs})}
        teacher_stage = r.teacher_stage()
        if teacher_stage is None:
            keys[TEACHER_REF] = digest({"model": r.teacher_source(), **self.load_kwargs})
        data = {split: (spec.model_dump() if (spec := r.data.spec(split)) else None)
                for split in ("train", "validation", "calibration")}
        teacher_ready = teacher_stage is None
        for step in self.steps:
            stage = r.stage(step.name)
            keys[step.name] = digest({"v": CACHE_VERSION, "input": keys[step.input], "pass": stage.pass_.model_dump(mode="json"),
                                      "teacher": keys.get(teacher_stage or TEACHER_REF) if teacher_ready else None,
                                      "data": data, "seed": r.seed})
            teacher_ready = teacher_ready or step.name == teacher_stage
        return keys

    def stage_dir(self, name: str) -> Path:
        return self.root / f"{name}-{self.keys[name]}"

    def is_done(self, name: str) -> bool:
        return (self.stage_dir(name) / DONE_FILE).exists()

    # --- data and models ---------------------------------------------------------------------------------------

    def examples(self, split: str):
        """Examples of a recipe split ("train", "validation", "eval", "calibration"), loaded once; None if absent."""
        if split not in self._examples:
            from compress.data.examples import load_examples

            spec = self.recipe.data.spec(split)
            self._examples[split] = load_examples(spec) if spec is not None else None
        return self._examples[split]

    def bundle(self):
        from compress.passes.base import DataBundle

        return DataBundle(train=self.examples("train"), eval=self.examples("validation"),
                          calibration=self.examples("calibration"))

    def source(self, ref: str) -> str:
        """Model source of `ref`: the recipe's model or teacher source, or a finished stage's saved model."""
        if ref == MODEL_REF:
            return self.recipe.model
        if ref == TEACHER_REF and self.recipe.teacher_stage() is None:
            return self.recipe.teacher_source()
        record = json.loads((self.stage_dir(ref) / RECORD_FILE).read_text())
        return str(self.stage_dir(ref) / record["artifact"]["path"])

    def load(self, ref: str):
        """A fresh copy of `ref`'s model (passes may change their input in place)."""
        from compress.models.load import load_model

        return load_model(self.source(ref), trust_remote_code=self.recipe.trust_remote_code, **self.load_kwargs)

    # --- stages ------------------------------------------------------------------------------------------------

    def run_stages(self) -> None:
        """Run every unfinished stage in order (finished ones are reused from their folders)."""
        from compress.models.artifacts import TorchModel

        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".*.tmp-*"):  # left by an interrupted run
            shutil.rmtree(stale, ignore_errors=True)
        current = {f".{self.stage_dir(s.name).name}.work" for s in self.steps}
        for stale in self.root.glob(".*.work"):  # work of a stage whose config has changed since
            if stale.name not in current:
                shutil.rmtree(stale, ignore_errors=True)
        teacher_stage = self.recipe.teacher_stage()
        teacher = None
        for i, step in enumerate(self.steps):
            done = self.is_done(step.name)
            self.emit("stage", name=step.name, index=i, total=len(self.steps), state="cached" if done else "start")
            if done:
                self.reused.add(step.name)
            if not done:
                if teacher is None and (teacher_stage is None or self.is_done(teacher_stage)):
                    loaded = self.load(teacher_stage or TEACHER_REF)
                    teacher = loaded if isinstance(loaded, TorchModel) else None
                self._run_stage(step, teacher)
                self.emit("stage", name=step.name, index=i, total=len(self.steps), state="done")

    def _run_stage(self, step, teacher) -> None:
        from compress.models.artifacts import OnnxModel
        from compress.passes.base import PassContext, get_pass

        stage = self.recipe.stage(step.name)
        final = self.stage_dir(step.name)
        tmp = self.root / f".{final.name}.tmp-{os.getpid()}"
        # The work folder outlives an interrupted run (keyed like the stage): training resumes from its checkpoint.
        keep = self.root / f".{final.name}.work"
        work = keep / "work"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # a folder without done.json is incomplete
        tmp.mkdir(parents=True)
        work.mkdir(parents=True, exist_ok=True)
        model = self.load(step.input)
        ctx = PassContext(teacher=teacher, data=self.bundle(), workdir=work, seed=self.recipe.seed,
                          progress=self.progress)
        from compress.training.loop import resumable

        start = time.perf_counter()
        with resumable(STAGE_CHECKPOINT_EVERY):
            result = get_pass(step.pass_type).fn(model, stage.pass_, ctx)
        seconds = time.perf_counter() - start
        out = result.model
        if isinstance(out, OnnxModel) and work.resolve() in out.path.resolve().parents:
            out.path = tmp / "work" / out.path.resolve().relative_to(work.resolve())
        os.replace(work, tmp / "work")  # the stage folder keeps its work folder, as before
        shutil.rmtree(keep, ignore_errors=True)
        if isinstance(out, OnnxModel):
            artifact = self._keep_onnx(out, tmp)
        else:
            out.save(tmp / "model")
            artifact = {"kind": "torch", "path": "model"}
        record = {"name": step.name, "pass": step.pass_type, "from": step.input, "key": self.keys[step.name],
                  "config": stage.pass_.model_dump(mode="json"), "seconds": round(seconds, 3),
                  "metrics": jsonable(result.metrics), "artifact": artifact,
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2))
        (tmp / DONE_FILE).write_text(json.dumps({"key": self.keys[step.name]}))
        os.replace(tmp, final)  # the stage appears complete or not at all

    @staticmethod
    def _keep_onnx(out, tmp: Path) -> dict:
        """Make sure an ONNX output lives in the stage folder with what reloading it needs (tokenizer, task)."""
        from compress.models.artifacts import MANIFEST_FILE

        folder = out.path.parent.resolve()
        if tmp.resolve() not in folder.parents and folder != tmp.resolve():
            shutil.copytree(folder, tmp / "model")  # the pass returned a model outside its workdir
            folder = (tmp / "model").resolve()
        if out.tokenizer is not None and not (folder / "tokenizer_config.json").exists():
            out.tokenizer.save_pretrained(folder)
        if not (folder / MANIFEST_FILE).exists():
            (folder / MANIFEST_FILE).write_text(json.dumps({"format": 1, "task": out.task, "input_names": out.input_names}))
        return {"kind": "onnx", "path": str((folder / out.path.name).relative_to(tmp.resolve()))}

    # --- evaluation --------------------------------------------------------------------------------------------

    def entries(self) -> list[dict]:
        """The stages the report shows, teacher first: name, source, record (None for a teacher source)."""
        teacher_stage = self.recipe.teacher_stage()
        out = []
        if teacher_stage is None:
            out.append({"name": TEACHER_REF, "ref": TEACHER_REF, "record": None,
                        "dir": self.root / f"{TEACHER_REF}-{self.keys[TEACHER_REF]}"})
        for step in self.steps:
            if step.name == teacher_stage or step.evaluate:
                entry = {"name": step.name, "ref": step.name, "dir": self.stage_dir(step.name),
                         "record": json.loads((self.stage_dir(step.name) / RECORD_FILE).read_text())}
                out.insert(0 if step.name == teacher_stage else len(out), entry)
        return out

    def evaluate(self, entry: dict) -> dict:
        """Logits on the eval split and size of one stage, cached in its folder by the eval settings."""
        from compress.evaluation.accuracy import score
        from compress.evaluation.size import model_size
        from compress.runtime.predict import predict

        ev = self.recipe.eval
        spec = self.recipe.data.spec("eval")
        key = digest({"data": spec.model_dump(), "batch_size": ev.batch_size, "max_length": ev.max_length})
        folder: Path = entry["dir"]
        cached_json, cached_npz = folder / f"eval-{key}.json", folder / f"eval-{key}.npz"
        if cached_json.exists() and cached_npz.exists():
            arrays = np.load(cached_npz)
            return {**json.loads(cached_json.read_text()), "logits": arrays["logits"]}
        causal_json = folder / f"eval-causal-{digest({'key': key, 'block': [ev.block_size, ev.max_blocks, ev.new_tokens]})}.json"
        if causal_json.exists():
            return json.loads(causal_json.read_text())
        from compress.data.examples import iter_batches

        model = self.load(entry["ref"])
        if is_causal(model):
            return self._evaluate_causal(entry, model, causal_json)
        examples = self.examples("eval")
        logits, labels = predict(model, iter_batches(model, examples, ev.batch_size, ev.max_length), threads=ev.threads)
        facts = {"metrics": score(logits, labels, examples.num_labels), "size": jsonable(model_size(model)),
                 "kind": model.kind, "source": self.source(entry["ref"])}
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(cached_npz, lambda p: np.savez(p, logits=logits), suffix=".npz")
        write_atomic(cached_json, lambda p: p.write_text(json.dumps(facts, indent=2)))
        return {**facts, "logits": logits}


    def _evaluate_causal(self, entry: dict, model, cached: Path) -> dict:
        """Perplexity on `data.eval` blocks, KL / top-1 / greedy agreement with the teacher (the teacher's own
        greedy tokens are computed once, in its evaluation, and reused for every stage)."""
        from compress.data.causal import pack_blocks, prompt_ids
        from compress.evaluation.causal import evaluate_causal
        from compress.evaluation.size import model_size

        ev = self.recipe.eval
        examples = self.examples("eval")
        blocks = pack_blocks(model.tokenizer, list(examples.texts), ev.block_size, ev.max_blocks)
        teacher_entry = self.entries()[0]
        is_teacher = entry["name"] == teacher_entry["name"]
        if not is_teacher:
            if self._teacher_generations is None:  # the teacher's own (cached) evaluation holds its greedy tokens
                self._teacher_generations = self.evaluate(teacher_entry)["metrics"]["generations"]
            if self._teacher_model is None:
                self._teacher_model = self.load(teacher_entry["ref"])
        metrics = evaluate_causal(model, blocks, reference=None if is_teacher else self._teacher_model,
                                  prompts=prompt_ids(model.tokenizer), max_new_tokens=ev.new_tokens,
                                  threads=ev.threads, reference_generations=self._teacher_generations)
        if is_teacher:
            self._teacher_generations = metrics["generations"]
            metrics.update({"kl": 0.0, "top1_agreement": 1.0, "greedy_prefix": float(ev.new_tokens),
                            "greedy_agreement": 1.0})
        facts = {"metrics": metrics, "size": jsonable(model_size(model)), "kind": model.kind,
                 "source": self.source(entry["ref"]), "causal": True}
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, lambda p: p.write_text(json.dumps(facts, indent=2)))
        return facts


def run(recipe: Recipe, *, runs_dir: str | Path = "runs", fresh: bool = False, on_event: Event | None = None,
        progress: bool = True) -> dict:
    """Run `recipe` and return the results (the `results.json` data before `report.build` adds verdicts).

    Args:
        recipe: a validated recipe.
        runs_dir: root of the stage cache; stages live in `runs_dir/<recipe>/<stage>-<key>/`.
        fresh: delete this recipe's cache first and recompute every stage.
        on_event: callback `(kind, **info)` for progress display: kind "stage" (name, index, total, state),
            "eval" (name, index, total), "bench" (done, total).
        progress: let passes show their own progress bars.
    """
    from compress.core.paths import RunLock, guard_output

    runner = Runner(recipe, Path(runs_dir), on_event, progress)
    guard_output(runner.root, recipe_inputs(recipe), replace=False, what="--runs")
    with RunLock(runner.root):  # one run per folder; released on exit, taken over if its owner died
        return _run_locked(runner, recipe, fresh)


def _run_locked(runner: Runner, recipe: Recipe, fresh: bool) -> dict:
    import torch

    from compress.evaluation.accuracy import agreement
    from compress.evaluation.latency.bench import bench
    from compress.evaluation.latency.environment import environment, physical_cores

    if fresh:
        shutil.rmtree(runner.root, ignore_errors=True)
    if recipe.eval.threads:
        torch.set_num_threads(recipe.eval.threads)
    runner.run_stages()
    entries = runner.entries()
    emit = runner.emit
    evals = []
    for i, entry in enumerate(entries):
        emit("eval", name=entry["name"], index=i, total=len(entries))
        evals.append(runner.evaluate(entry))
    teacher_logits = evals[0].get("logits")
    spec = recipe.eval.latency
    timing: dict = {"results": [], "environment": None}
    if spec is not None:
        timing = bench([e["source"] for e in evals], spec, labels=[e["name"] for e in entries],
                       load_kwargs=runner.load_kwargs, on_progress=lambda d, t: emit("bench", done=d, total=t))
    threads = (spec.threads if spec else None) or recipe.eval.threads or physical_cores()
    stages = []
    for entry, ev in zip(entries, evals, strict=False):
        record = entry["record"] or {}
        size = ev["size"]
        rows = [{k: v for k, v in r.items() if k != "model"}  # every figure the bench measured, per shape
                for r in timing["results"] if r["model"] == entry["name"]]
        stage = recipe.stage(entry["name"]) if record else None
        stages.append({
            "name": entry["name"], "pass": record.get("pass"), "from": record.get("from"),
            "note": stage.note if stage else None, "is_teacher": entry is entries[0],
            "is_baseline": entry["name"] in recipe.baselines, "config": record.get("config"),
            "seconds": record.get("seconds"), "cached": entry["name"] in runner.reused, "pass_metrics": record.get("metrics", {}), "kind": ev["kind"],
            "backend": "onnxruntime" if ev["kind"] == "onnx" else "pytorch", "path": ev["source"],
            "accuracy": ev["metrics"].get("accuracy"), "metrics": ev["metrics"],
            "agreement": agreement(ev["logits"], teacher_logits) if not ev.get("causal") else {
                k: ev["metrics"].get(k) for k in ("kl", "top1_agreement", "greedy_prefix", "greedy_agreement")},
            **({"task": CAUSAL_TASK, "perplexity": ev["metrics"]["perplexity"]} if ev.get("causal") else {}),
            "size_mb": round(size["size_mb"], 3), "zipped_mb": round(size["zipped_mb"], 3), "params": size["params"],
            "nonzero_fraction": round(size["nonzero_fraction"], 4), "latency": rows,
        })
    lineage = []
    for step in runner.steps:  # every stage that ran, evaluated or not (per-layer tables come from here)
        record = json.loads((runner.stage_dir(step.name) / RECORD_FILE).read_text())
        lineage.append({"name": step.name, "pass": step.pass_type, "from": step.input, "seconds": record["seconds"],
                        "cached": step.name in runner.reused, "evaluated": step.evaluate,
                        "config": record["config"], "pass_metrics": record["metrics"]})
    primary = recipe.eval.primary_shape()
    environment_info = dict(timing["environment"] or environment(threads))
    environment_info["env"] = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
                               if k in os.environ}
    return {
        "schema": SCHEMA_VERSION, "recipe": recipe.name, "description": recipe.description,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment_info,
        "eval": {"data": recipe.data.spec("eval").model_dump(), "examples": len(runner.examples("eval")),
                 "batch_size": recipe.eval.batch_size, "max_length": recipe.eval.max_length,
                 **({"task": CAUSAL_TASK, "block_size": recipe.eval.block_size, "max_blocks": recipe.eval.max_blocks,
                     "new_tokens": recipe.eval.new_tokens, "prompts": len(PROMPTS)} if evals[0].get("causal") else {})},
        "latency_spec": timing.get("spec"), "primary": primary.model_dump() if primary else None,
        "goals": recipe.goals.model_dump() if recipe.goals else None,
        "teacher": entries[0]["name"], "baselines": list(recipe.baselines),
        "run_dir": str(runner.root), "recipe_config": recipe_dict(recipe), "stages": stages,
        "pipeline": lineage,
    }


def recipe_inputs(recipe: Recipe) -> list[str]:
    """Every local source the recipe reads (model, teacher, data), for the output-path guard."""
    sources = [recipe.model, recipe.teacher, recipe.data.source]
    for split in ("train", "validation", "eval", "calibration"):
        spec = getattr(recipe.data, split)
        sources.append(spec.source if spec is not None else None)
    return [s for s in sources if s]


def cached_stages(recipe: Recipe, runs_dir: str | Path = "runs") -> dict[str, bool]:
    """Stage name -> whether its output is already cached (for the dry-run plan)."""
    runner = Runner(recipe, Path(runs_dir))
    return {s.name: runner.is_done(s.name) for s in runner.steps}


def check_data(recipe: Recipe) -> None:
    """Fail early (before any stage runs) when a data split cannot be found."""
    for split in ("train", "validation", "eval", "calibration"):
        spec = recipe.data.spec(split)
        if spec is None or spec.source.startswith("builtin:"):
            continue
        path = Path(spec.source).expanduser()
        if (spec.source.startswith((".", "/", "~")) or path.suffix) and not path.exists():
            raise CompressError(f"data.{split}: '{spec.source}' not found",
                                "paths are relative to the folder you run from (the repository root)")


run_recipe = run  # the public name (`compress.run_recipe`)

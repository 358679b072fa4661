"""Run a recipe: apply each stage's pass (cached and resumable), score every stage, time them all in one bench.

Every stage's output lives in `runs/<recipe>/<stage>-<key>/`, where `key` hashes the stage's input key, the
teacher's key, the pass config, the data it may read and the seed. A stage folder is built under a temporary
name and renamed into place with `done.json` inside, so a folder either is complete or does not exist: after
a crash or Ctrl-C the next run reuses every finished stage, and changing one pass recomputes only that stage
and the stages downstream of it. Evaluation logits are cached beside each stage too; latency is measured
fresh by one interleaved `bench` call over all stages (one process per model, the project's only protocol).
Scoring lives in `score`, the results dict in `results`; this module runs the stages and holds their cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compress.core.errors import CompressError
from compress.pipeline import results
from compress.pipeline.peers import prepare_peers
from compress.pipeline.recipe import MODEL_REF, TEACHER_REF, Recipe, plan
from compress.pipeline.results import digest, jsonable
from compress.pipeline.score import score_stages, time_stages

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the layout of a stage folder changes
DONE_FILE = "done.json"
# Training inside a stage checkpoints this often (unless its config says otherwise) and resumes after a crash.
STAGE_CHECKPOINT_EVERY = 50
RECORD_FILE = "record.json"

Event = Callable[..., None]  # on_event(kind, **info): "stage" (start/done), "eval", "bench"


class Runner:
    """State of one run: where stages live, loaded data, the teacher. Use `run(recipe)`."""

    def __init__(self, recipe: Recipe, runs_dir: Path, on_event: Event | None = None, progress: bool = True):
        self.recipe = recipe
        self.root = Path(runs_dir) / recipe.name
        self.emit = on_event or (lambda kind, **info: None)
        self.progress = progress
        self.steps = plan(recipe)
        self._examples: dict[str, Any] = {}
        self.train_mix: list[dict] | None = None  # data.train as a mix: what each source brought (`load_mix` rows)
        self.reused: set[str] = set()  # stages taken from the cache in this run
        self.load_kwargs = {k: v for k, v in {"task": recipe.task, "num_labels": recipe.num_labels}.items() if v}
        self.keys = self._keys()

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
        train = r.data.spec("train")
        if getattr(train, "dedup_against_eval", False):  # a mix's documents depend on the eval sets it avoids
            data["dedup_against"] = {"eval": r.data.spec("eval").model_dump(),
                                     "domains": [d.model_dump() for d in r.eval.domains]}
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

    def record(self, name: str) -> dict:
        """What a finished stage recorded: its pass, config, seconds, metrics and artifact."""
        return json.loads((self.stage_dir(name) / RECORD_FILE).read_text())

    # --- data and models ---------------------------------------------------------------------------------------

    def examples(self, split: str):
        """Examples of a recipe split ("train", "validation", "eval", "calibration"), loaded once; None if absent."""
        if split not in self._examples:
            from compress.data.causal import MixSpec, load_mix
            from compress.data.examples import load_examples

            spec = self.recipe.data.spec(split)
            if isinstance(spec, MixSpec):
                avoid = self.eval_texts() if spec.dedup_against_eval else []
                try:
                    self._examples[split], self.train_mix = load_mix(spec, eval_texts=avoid)
                except CompressError as e:
                    raise CompressError(f"data.{split}.{e.problem}", e.fix) from None
            else:
                self._examples[split] = load_examples(spec) if spec is not None else None
        return self._examples[split]

    def eval_texts(self) -> list[str]:
        """Every document a stage is scored on: the data.eval split's texts (pairs too) and every eval.domains
        source's documents (all of them, not only the first `max_documents`); a training mix leaves them out."""
        from compress.data.causal import causal_texts
        from compress.pipeline.score import domain_texts

        texts = causal_texts(self.examples("eval"))
        for d in self.recipe.eval.domains:
            texts += domain_texts(d)
        return texts

    def data_report(self) -> dict:
        """What the run trained on, for results.json: `train_mix` (per mix source: name, licence, documents,
        dropped, characters, tokens by the model's tokenizer), None when data.train is not a mix."""
        from compress.data.causal import MixSpec, load_mix

        spec = self.recipe.data.spec("train")
        if not isinstance(spec, MixSpec):
            return {"train_mix": None}
        if self.train_mix is None or any("tokens" not in row for row in self.train_mix):
            avoid = self.eval_texts() if spec.dedup_against_eval else []
            _, self.train_mix = load_mix(spec, eval_texts=avoid, tokenizer=self.tokenizer())
        return {"train_mix": self.train_mix}

    def tokenizer(self):
        """The recipe model's tokenizer (loaded with the model: a GGUF or folder has no cheaper way in)."""
        return self.load(MODEL_REF).tokenizer

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
        return str(self.stage_dir(ref) / self.record(ref)["artifact"]["path"])

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
        from compress.pipeline.apply import keep_onnx

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
            artifact = keep_onnx(out, tmp)
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

    # --- what the report shows ---------------------------------------------------------------------------------

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
                         "record": self.record(step.name)}
                out.insert(0 if step.name == teacher_stage else len(out), entry)
        return out


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
    from compress.pipeline.preflight import validate_recipe

    runner = Runner(recipe, Path(runs_dir), on_event, progress)
    guard_output(runner.root, recipe_inputs(recipe), replace=False, what="--runs")
    validate_recipe(recipe, examples=runner.examples)  # empty data, short domains, long windows: fail before stage 1
    with RunLock(runner.root):  # one run per folder; released on exit, taken over if its owner died
        return _run_locked(runner, recipe, fresh)


def _run_locked(runner: Runner, recipe: Recipe, fresh: bool) -> dict:
    import torch

    if fresh:
        shutil.rmtree(runner.root, ignore_errors=True)
    if recipe.eval.threads:
        torch.set_num_threads(recipe.eval.threads)
    runner.run_stages()
    entries = runner.entries()
    entries += prepare_peers(runner, entries[0])  # peer runtimes on the teacher's weights, after the stages
    evals = score_stages(runner, entries)
    timing = time_stages(runner, entries, evals)
    stages = results.stage_rows(recipe, entries, evals, timing, runner.reused)
    records = {step.name: runner.record(step.name) for step in runner.steps}
    return results.build(recipe, stages=stages, lineage=results.lineage_rows(runner.steps, records, runner.reused),
                         evals=evals, timing=timing, examples=len(runner.examples("eval")), run_dir=str(runner.root),
                         data=runner.data_report())


def recipe_inputs(recipe: Recipe) -> list[str]:
    """Every local source the recipe reads (model, teacher, data), for the output-path guard."""
    sources = [recipe.model, recipe.teacher, recipe.data.source]
    for split in ("train", "validation", "eval", "calibration"):
        spec = getattr(recipe.data, split)
        sources.append(spec.source if spec is not None else None)
        if spec is not None and spec.mix is not None:  # a mix reads files (and corpora, which are not paths)
            sources += [m.source for m in spec.mix if not m.source.startswith("corpus:")]
    return [s for s in sources if s]


def cached_stages(recipe: Recipe, runs_dir: str | Path = "runs") -> dict[str, bool]:
    """Stage name -> whether its output is already cached (for the dry-run plan)."""
    runner = Runner(recipe, Path(runs_dir))
    return {s.name: runner.is_done(s.name) for s in runner.steps}


def check_data(recipe: Recipe) -> None:
    """Fail early (before any stage runs) when a data split cannot be found."""
    from compress.data.causal import MixSpec
    from compress.pipeline.preflight import check_mix

    for split in ("train", "validation", "eval", "calibration"):
        spec = recipe.data.spec(split)
        if isinstance(spec, MixSpec):
            check_mix(spec, f"data.{split}.mix")
            continue
        if spec is None or spec.source.startswith("builtin:"):
            continue
        path = Path(spec.source).expanduser()
        if (spec.source.startswith((".", "/", "~")) or path.suffix) and not path.exists():
            raise CompressError(f"data.{split}: '{spec.source}' not found",
                                "paths are relative to the folder you run from (the repository root)")


run_recipe = run  # the public name (`compress.run_recipe`)

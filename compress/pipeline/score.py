"""Score a run's stages: quality on the eval split against the teacher, size, and latency in one bench call."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from compress.core.paths import write_atomic
from compress.models.causal import is_causal
from compress.pipeline.results import digest, jsonable

CAUSAL_AGREEMENT = ("kl", "top1_agreement", "greedy_prefix", "greedy_agreement")


def score_stages(runner, entries: list[dict]) -> list[dict]:
    """Figures of every entry (teacher first, see `Runner.entries`), each with its `agreement` with the teacher."""
    scorer = Scorer(runner, entries[0])
    evals = []
    for i, entry in enumerate(entries):
        runner.emit("eval", name=entry["name"], index=i, total=len(entries))
        evals.append(scorer.evaluate(entry))
    return [{**ev, "agreement": scorer.agreement(ev, evals[0])} for ev in evals]


def time_stages(runner, entries: list[dict], evals: list[dict]) -> dict:
    """Every entry timed in one interleaved `bench` call (when the recipe asks for latency), and the environment."""
    from compress.evaluation.latency.bench import bench
    from compress.evaluation.latency.environment import environment, physical_cores

    recipe = runner.recipe
    spec = recipe.eval.latency
    timing: dict = {"results": [], "environment": None}
    if spec is not None:
        timing = bench([e["source"] for e in evals], spec, labels=[e["name"] for e in entries],
                       load_kwargs=runner.load_kwargs, on_progress=lambda d, t: runner.emit("bench", done=d, total=t))
    threads = (spec.threads if spec else None) or recipe.eval.threads or physical_cores()
    environment_info = dict(timing["environment"] or environment(threads))
    environment_info["env"] = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
                               if k in os.environ}
    return {**timing, "environment": environment_info}


class Scorer:
    """Evaluation of one run's stages; a causal LM's teacher (and its greedy tokens) is loaded once for all."""

    def __init__(self, runner, teacher_entry: dict):
        self.runner = runner
        self.teacher_entry = teacher_entry
        self._teacher_model = None  # causal LMs: the reference every stage's KL is measured against
        self._teacher_generations = None  # ...and its greedy tokens, computed once

    def evaluate(self, entry: dict) -> dict:
        """Figures and size of one stage, cached in its folder by the eval settings. The one place scoring forks:
        a classifier keeps its logits on the eval split, a causal LM its perplexity and agreement with the teacher."""
        ev = self.runner.recipe.eval
        spec = self.runner.recipe.data.spec("eval")
        key = digest({"data": spec.model_dump(), "batch_size": ev.batch_size, "max_length": ev.max_length})
        folder: Path = entry["dir"]
        cached_json, cached_npz = folder / f"eval-{key}.json", folder / f"eval-{key}.npz"
        if cached_json.exists() and cached_npz.exists():
            arrays = np.load(cached_npz)
            return {**json.loads(cached_json.read_text()), "logits": arrays["logits"]}
        causal_json = folder / f"eval-causal-{digest({'key': key, 'block': [ev.block_size, ev.max_blocks, ev.new_tokens]})}.json"
        if causal_json.exists():
            return json.loads(causal_json.read_text())
        model = self.runner.load(entry["ref"])
        if is_causal(model):
            return self._causal(entry, model, causal_json)
        return self._classifier(entry, model, cached_json, cached_npz)

    @staticmethod
    def agreement(ev: dict, teacher: dict) -> dict:
        """Agreement with the teacher: of the logits (classifier), or the figures `evaluate` measured (causal LM)."""
        from compress.evaluation.accuracy import agreement

        if ev.get("causal"):
            return {k: ev["metrics"].get(k) for k in CAUSAL_AGREEMENT}
        return agreement(ev["logits"], teacher.get("logits"))

    def _classifier(self, entry: dict, model, cached_json: Path, cached_npz: Path) -> dict:
        """Accuracy and logits on the eval split (the logits kept beside the figures)."""
        from compress.data.examples import iter_batches
        from compress.evaluation.accuracy import score
        from compress.evaluation.size import model_size
        from compress.runtime.predict import predict

        ev = self.runner.recipe.eval
        examples = self.runner.examples("eval")
        logits, labels = predict(model, iter_batches(model, examples, ev.batch_size, ev.max_length), threads=ev.threads)
        facts = {"metrics": score(logits, labels, examples.num_labels), "size": jsonable(model_size(model)),
                 "kind": model.kind, "source": self.runner.source(entry["ref"])}
        cached_json.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cached_npz, lambda p: np.savez(p, logits=logits), suffix=".npz")
        write_atomic(cached_json, lambda p: p.write_text(json.dumps(facts, indent=2)))
        return {**facts, "logits": logits}

    def _causal(self, entry: dict, model, cached: Path) -> dict:
        """Perplexity on `data.eval` blocks, KL / top-1 / greedy agreement with the teacher (the teacher's own
        greedy tokens are computed once, in its evaluation, and reused for every stage)."""
        from compress.data.causal import pack_blocks, prompt_ids
        from compress.evaluation.causal import evaluate_causal
        from compress.evaluation.size import model_size

        ev = self.runner.recipe.eval
        examples = self.runner.examples("eval")
        blocks = pack_blocks(model.tokenizer, list(examples.texts), ev.block_size, ev.max_blocks)
        teacher_entry = self.teacher_entry
        is_teacher = entry["name"] == teacher_entry["name"]
        if not is_teacher:
            if self._teacher_generations is None:  # the teacher's own (cached) evaluation holds its greedy tokens
                self._teacher_generations = self.evaluate(teacher_entry)["metrics"]["generations"]
            if self._teacher_model is None:
                self._teacher_model = self.runner.load(teacher_entry["ref"])
        metrics = evaluate_causal(model, blocks, reference=None if is_teacher else self._teacher_model,
                                  prompts=prompt_ids(model.tokenizer), max_new_tokens=ev.new_tokens,
                                  threads=ev.threads, reference_generations=self._teacher_generations)
        if is_teacher:
            self._teacher_generations = metrics["generations"]
            metrics.update({"kl": 0.0, "top1_agreement": 1.0, "greedy_prefix": float(ev.new_tokens),
                            "greedy_agreement": 1.0})
        facts = {"metrics": metrics, "size": jsonable(model_size(model)), "kind": model.kind,
                 "source": self.runner.source(entry["ref"]), "causal": True}
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, lambda p: p.write_text(json.dumps(facts, indent=2)))
        return facts

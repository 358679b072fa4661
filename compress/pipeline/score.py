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


def domain_texts(domain) -> list[str]:
    """Every document of an eval domain (`DomainSpec`), before its `max_documents` cut."""
    from compress.data.causal import TextSource, load_texts

    return load_texts(TextSource(domain.source, split=domain.split, text_field=domain.text_field))


def training_sources(recipe) -> list[str]:
    """The local sources data.train reads: its source, or every file source of its mix (corpora are not files)."""
    from compress.data.causal import CORPUS_PREFIX, MixSpec

    spec = recipe.data.spec("train")
    if spec is None:
        return []
    if isinstance(spec, MixSpec):
        return [s.source for s in spec.sources if not s.source.startswith(CORPUS_PREFIX)]
    return [spec.source]


class Scorer:
    """Evaluation of one run's stages; a causal LM's teacher (and its greedy tokens) is loaded once for all."""

    def __init__(self, runner, teacher_entry: dict):
        self.runner = runner
        self.teacher_entry = teacher_entry
        self._teacher_model = None  # causal LMs: the reference every stage's KL is measured against
        self._teacher_generations = None  # ...and its greedy tokens, computed once
        self._domains = None  # causal LMs: the eval domains' documents, read once

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
        causal_key = {"key": key, "domains": [d.model_dump() for d in ev.domains], "window": ev.window,
                      "separator": ev.separator, "tasks": ev.tasks, "task_limit": ev.task_limit,
                      "task_data": ev.task_data, "prompts": ev.prompts, "new_tokens": ev.new_tokens, "protocol": 2}
        causal_json = folder / f"eval-causal-{digest(causal_key)}.json"
        if causal_json.exists():
            return json.loads(causal_json.read_text())
        if entry.get("peer"):  # a peer runtime on the teacher's weights: its own log-probabilities, no model object
            return self._peer(entry, causal_json)
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
        """Per-document perplexity and bits per byte on every eval domain, KL / top-1 against the teacher on the
        same targets, greedy agreement on the prompts (chat template for instruct models; the teacher's own greedy
        tokens are computed once, in its evaluation, and reused), and zero-shot task accuracy. The first domain
        (the eval split when none is given) gives the headline perplexity."""
        from compress.data.causal import PROMPTS, document_separator, load_prompts, prompt_ids
        from compress.evaluation.causal import greedy_agreement, score_documents
        from compress.evaluation.size import model_size
        from compress.evaluation.tasks import zero_shot
        from compress.runtime.causal import CausalRunner

        ev = self.runner.recipe.eval
        teacher_entry = self.teacher_entry
        is_teacher = entry["name"] == teacher_entry["name"]
        if not is_teacher:
            if self._teacher_generations is None:  # the teacher's own (cached) evaluation holds its greedy tokens
                self._teacher_generations = self.evaluate(teacher_entry)["metrics"]["generations"]
            if self._teacher_model is None:
                self._teacher_model = self.runner.load(teacher_entry["ref"])
        reference = None if is_teacher else self._teacher_model
        separator = document_separator(model.tokenizer, ev.separator)
        # One runner per model for every domain and the generations (an ONNX stage is one session, not four).
        run = CausalRunner(model, threads=ev.threads)
        ref_run = CausalRunner(reference, threads=ev.threads) if reference is not None else None
        domains = {}
        for name, domain in self.domains().items():
            figures = score_documents(model, domain["texts"], window=ev.window, separator_id=separator,
                                      reference=reference, threads=ev.threads, runner=run, reference_runner=ref_run)
            domains[name] = {**figures, **{k: v for k, v in domain.items() if k != "texts"}}
        headline = next(iter(domains.values()))
        prompts = prompt_ids(model.tokenizer, load_prompts(ev.prompts) if ev.prompts else PROMPTS)
        generation = greedy_agreement(run, prompts, ev.new_tokens,
                                      reference_generations=self._teacher_generations)
        tasks = {task: zero_shot(model, task, data_root=ev.task_data, limit=ev.task_limit, threads=ev.threads)
                 for task in ev.tasks}
        metrics = {k: headline[k] for k in ("perplexity", "nll", "tokens", "documents", "bits_per_byte")}
        metrics.update({"kl": headline.get("kl"), "top1_agreement": headline.get("top1_agreement"), **generation,
                        "domains": domains, "tasks": tasks, "separator_id": separator, "window": ev.window})
        if is_teacher:
            self._teacher_generations = metrics["generations"]
            metrics.update({"kl": 0.0, "top1_agreement": 1.0, "greedy_prefix": float(ev.new_tokens),
                            "greedy_agreement": 1.0, "greedy_new_tokens": ev.new_tokens, "greedy_prompts": len(prompts)})
        facts = {"metrics": metrics, "size": jsonable(model_size(model)), "kind": model.kind,
                 "source": self.runner.source(entry["ref"]), "causal": True}
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, lambda p: p.write_text(json.dumps(facts, indent=2)))
        return facts

    def domains(self) -> dict[str, dict]:
        """The eval domains' documents, read once per run: {name: {"texts", "source", "dropped_duplicates",
        "trained_on"}}. Documents that also occur in the training text are dropped (and counted); a domain read
        from the training split's source is marked as trained on."""
        if self._domains is not None:
            return self._domains
        from compress.data.causal import causal_texts, deduplicate

        recipe = self.runner.recipe
        train = self.runner.examples("train")
        train_texts = causal_texts(train) if train is not None and train.texts is not None else []
        train_sources = {str(Path(s).resolve()) for s in training_sources(recipe)}
        found = {}
        if recipe.eval.domains:
            for d in recipe.eval.domains:
                texts = domain_texts(d)
                found[d.name] = (texts[: d.max_documents] if d.max_documents else texts, d.source, d.split)
        else:
            spec = recipe.data.spec("eval")
            found[Path(spec.source).name or "eval"] = (list(self.runner.examples("eval").texts), spec.source, spec.split)
        self._domains = {}
        for name, (texts, source, split) in found.items():
            kept, dropped = deduplicate(texts, train_texts)
            self._domains[name] = {"texts": kept, "source": source, "split": split, "dropped_duplicates": len(dropped),
                                   "trained_on": str(Path(source).resolve()) in train_sources}
        return self._domains

    def _peer(self, entry: dict, cached: Path) -> dict:
        """A peer runtime scored like a stage on every eval domain, through its own next-token log-probabilities:
        per-document perplexity, bits per byte, KL / top-1 against the teacher (no greedy or task figures)."""
        from compress.data.causal import document_separator
        from compress.evaluation.causal import score_documents
        from compress.pipeline.peers import PeerForward, artifact_size
        from compress.runtime.causal import CausalRunner
        from compress.runtime.peers import open_peer

        ev = self.runner.recipe.eval
        if self._teacher_model is None:
            self._teacher_model = self.runner.load(self.teacher_entry["ref"])
        teacher = self._teacher_model
        separator = document_separator(teacher.tokenizer, ev.separator)
        peer = open_peer(entry["peer"]["runtime"], entry["peer"]["path"], threads=ev.threads or 2)
        try:
            domains, teacher_run = {}, CausalRunner(teacher, threads=ev.threads)
            for name, domain in self.domains().items():
                figures = score_documents(teacher, domain["texts"], window=ev.window, separator_id=separator,
                                          reference=teacher, threads=ev.threads, batch_size=1,
                                          runner=PeerForward(peer), reference_runner=teacher_run)
                domains[name] = {**figures, **{k: v for k, v in domain.items() if k != "texts"}}
        finally:
            peer.close()
        headline = next(iter(domains.values()))
        metrics = {k: headline[k] for k in ("perplexity", "nll", "tokens", "documents", "bits_per_byte")}
        metrics.update({"kl": headline.get("kl"), "top1_agreement": headline.get("top1_agreement"),
                        "greedy_prefix": None, "greedy_agreement": None, "domains": domains, "tasks": {},
                        "separator_id": separator, "window": ev.window})
        size = {**artifact_size(entry["peer"]["path"]), "params": teacher.num_parameters()}
        facts = {"metrics": metrics, "size": jsonable(size), "kind": "peer", "source": entry["source"],
                 "backend": {"llamacpp": "llama.cpp", "genai": "onnxruntime-genai"}[entry["peer"]["runtime"]],
                 "causal": True}
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, lambda p: p.write_text(json.dumps(facts, indent=2)))
        return facts

"""Zero-shot task accuracy of causal LMs by the log-likelihood of the answer choices, the method of EleutherAI's
lm-evaluation-harness (`output_type: multiple_choice`, no few-shot examples), for PyTorch and ONNX Runtime models
alike: every score goes through `CausalRunner.forward`.

The method, step for step as lm-eval 0.4 (`lm_eval/api/task.py`, `api/model.py`, `models/huggingface.py`) does it:

- One request per choice: context = the prompt, continuation = " " + choice (lm-eval's `target_delimiter`).
- Tokenization (`TemplateLM._encode_pair`): trailing spaces of the context move to the continuation; then
  `whole = encode(context + continuation)`, `ctx = encode(context)` and the continuation tokens are
  `whole[len(ctx):]`, so they are exactly the tail of the sequence the model reads. `encode` is the tokenizer's
  default call (its own special tokens, e.g. a BOS), as lm-eval's `HFLM` does when `add_bos_token` is not set.
- Score of a choice: the sum over its tokens of log softmax(logits) at the positions that predict them, the input
  being `(ctx + continuation)[:-1]` left-truncated to the model's context (lm-eval's truncation).
- `acc`: argmax over choices of the summed log-probability equals the gold choice; `acc_norm`: argmax of the sum
  divided by the choice's length in characters (without the leading space), lm-eval's length normalisation.
- Instruct/chat models (SmolLM2-Instruct) are scored on the raw prompt, without a chat template, as lm-eval does
  unless `--apply_chat_template` is given: the figures compare with published zero-shot harness numbers, not with
  the model's chat behaviour.

lm-eval itself is an optional extra (`pip install 'compress[eval]'`), not the engine. Tried 2026-12-07 on our stack
(torch 2.13.0, transformers 4.57.6, optimum 2.1.0, onnxruntime 1.32.0, offline) with lm-eval 0.4.13: it installs
without changing those four (a dry run against our venv adds 24 packages, nltk, sacrebleu, rouge-score, evaluate,
absl-py, lxml, pytablewriter and its helpers among them, and downgrades python-dateutil 4.0 -> 2.9 for typepy's
<3 pin), and its evaluator scores our models through `harness_lm` (a `TemplateLM` over `CausalRunner`) on our
tasks as local-JSONL configs (`harness_task`). Both that adapter and lm-eval's own `HFLM` on the same weights give
the per-choice log-likelihoods of `zero_shot` (SmolLM2, 100 sst2 + 40 rte examples: identical, max |diff| 0.0;
`test_lm_eval_scores_the_same` checks it wherever lm-eval is installed). The default path stays ours, because
lm-eval imports ~3 s of libraries, needs the json `datasets` builder and a cache for every run, and pulls those
24 packages into an install that only needs ~100 lines of the method; the figures are the same.

Tasks are data: a prompt template, the choices, the label -> choice mapping and the data source (a JSONL file
under a data root, default `../shared/data`, the folder beside the checkout). Prompts of `sst2` and `rte` are
lm-eval's GLUE prompts word for word; `emotion` has no lm-eval task and uses a prompt of ours in the same style.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.core.errors import CompressError
from compress.core.registry import Registry
from compress.runtime.causal import CausalRunner

log = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = Path("../shared/data")
Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class ZeroShotTask:
    """A multiple-choice task scored zero-shot by log-likelihood.

    Args:
        name: the registry name (`compress eval --zero-shot NAME`).
        folder: the dataset folder under the data root.
        split: the file stem: the data is `<data_root>/<folder>/<split>.jsonl`.
        fields: the JSONL fields the template reads.
        template: the prompt, `str.format` over `fields` (ends without a space: the choice brings its own).
        choices: the answer texts, without the leading space (lm-eval's `doc_to_choice`).
        labels: label value in the data -> index into `choices`.
        label_field: the JSONL field holding the label.
        delimiter: put between the prompt and each choice (lm-eval's `target_delimiter`).
        origin: where the prompt comes from (for reports).
    """

    name: str
    folder: str
    split: str
    fields: tuple[str, ...]
    template: str
    choices: tuple[str, ...]
    labels: dict[int | str, int] = field(default_factory=dict)
    label_field: str = "label"
    delimiter: str = " "
    origin: str = ""

    def path(self, data_root: str | Path = DEFAULT_DATA_ROOT) -> Path:
        return Path(data_root) / self.folder / f"{self.split}.jsonl"


TASKS = Registry("zero-shot task")
TASKS.register("sst2", ZeroShotTask(
    name="sst2", folder="sst2", split="dev", fields=("text",),
    template="{text}\nQuestion: Is this sentence positive or negative?\nAnswer:",
    choices=("negative", "positive"), labels={0: 0, 1: 1}, origin="lm-eval glue/sst2"))
TASKS.register("rte", ZeroShotTask(
    name="rte", folder="rte", split="validation", fields=("text", "text_pair"),
    template="{text}\nQuestion: {text_pair} True or False?\nAnswer:",
    # label 0 = entailment -> "True", 1 = not_entailment -> "False" (GLUE ids, as lm-eval's glue/rte)
    choices=("True", "False"), labels={0: 0, 1: 1}, origin="lm-eval glue/rte"))
TASKS.register("emotion", ZeroShotTask(
    name="emotion", folder="emotion", split="validation", fields=("text",),
    template="{text}\nQuestion: Which emotion does this message express: sadness, joy, love, anger, fear or "
             "surprise?\nAnswer:",
    choices=("sadness", "joy", "love", "anger", "fear", "surprise"), labels={i: i for i in range(6)},
    origin="compress (no lm-eval task; GLUE-style prompt)"))


def get_task(task: str | ZeroShotTask) -> ZeroShotTask:
    """The registered task of that name (a `ZeroShotTask` passes through); unknown names are a `CompressError`."""
    return task if isinstance(task, ZeroShotTask) else TASKS.lookup(task)


# --- data --------------------------------------------------------------------------------------------------


def load_documents(task: ZeroShotTask, data_root: str | Path = DEFAULT_DATA_ROOT,
                   limit: int | None = None) -> list[tuple[str, int]]:
    """(prompt, gold choice index) for the first `limit` rows of the task's JSONL file (lm-eval's `--limit`)."""
    path = task.path(data_root)
    if not path.is_file():
        raise CompressError(f"zero-shot task '{task.name}' has no data file {path}",
                            f"pass --data-root DIR holding {task.folder}/{task.split}.jsonl (default {DEFAULT_DATA_ROOT})")
    docs = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if limit is not None and len(docs) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CompressError(f"{path}:{line_no} is not JSON ({e.msg})", "one JSON object per line") from None
            missing = [k for k in (*task.fields, task.label_field) if k not in row]
            if missing:
                raise CompressError(f"{path}:{line_no} has no field {missing[0]!r}",
                                    f"task '{task.name}' reads {', '.join((*task.fields, task.label_field))}")
            if row[task.label_field] not in task.labels:
                raise CompressError(f"{path}:{line_no} has label {row[task.label_field]!r}",
                                    f"task '{task.name}' knows labels {sorted(task.labels)}")
            prompt = task.template.format(**{k: row[k] for k in task.fields})
            docs.append((prompt, task.labels[row[task.label_field]]))
    if not docs:
        raise CompressError(f"zero-shot task '{task.name}': {path} has no examples", "check the file or --limit")
    return docs


# --- the lm-eval method ------------------------------------------------------------------------------------


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids as lm-eval's `TemplateLM._encode_pair` (causal models) makes them:
    the continuation tokens are exactly the tail of `encode(context + continuation)`."""
    if not context:  # lm-eval: an empty context becomes the BOS (else EOS) token
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:  # a trailing space belongs to the next word's token: move it to the continuation
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def loglikelihoods(run: CausalRunner, requests: list[tuple[list[int], list[int]]], batch_size: int = 8,
                   on_progress: Callable[[int, int], None] | None = None) -> list[tuple[float, bool]]:
    """(sum of log p(continuation tokens | context), whether every one is the greedy token) per (ctx, cont) ids.

    Longest first and right-padded, as lm-eval batches them: the padding sits after the last real token, so
    (causal attention) it changes no real position's logits.

    Args:
        run: the model's runner.
        requests: (context ids, continuation ids) pairs (`encode_pair`).
        batch_size: sequences per forward pass.
        on_progress: callback(done, total) over requests.
    """
    import torch

    limit = run.context
    inputs, conts, cut = [], [], 0
    for ctx, cont in requests:
        if not cont:
            raise CompressError("a choice encodes to no tokens", "give every choice some text")
        seq = ctx + cont
        if limit is not None and len(seq) > limit + 1:  # lm-eval keeps the last `limit + 1` tokens
            seq, cut = seq[-(limit + 1):], cut + 1
        inputs.append(seq[:-1])  # the last token is predicted, never read
        conts.append(cont)
    if cut:
        log.warning("%d of %d requests are longer than the context of %d tokens: cut from the left", cut,
                    len(requests), limit)
    # Requests that read the same tokens share one row: one-token choices after one prompt all read the prompt
    # (lm-eval's HFLM shares them the same way, its `logits_cache`).
    rows_of: dict[tuple[int, ...], list[int]] = {}
    for i, seq in enumerate(inputs):
        rows_of.setdefault(tuple(seq), []).append(i)
    unique = sorted(rows_of, key=lambda seq: (-len(seq), seq))  # longest first: little padding per batch
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    done = 0
    for start in range(0, len(unique), batch_size):
        batch = unique[start:start + batch_size]
        ids = np.zeros((len(batch), len(batch[0])), np.int64)  # (B, longest), right-padded
        mask = np.zeros_like(ids)
        for r, seq in enumerate(batch):
            ids[r, :len(seq)], mask[r, :len(seq)] = seq, 1
        logits, _ = run.forward(ids, mask)  # (B, longest, V)
        for r, seq in enumerate(batch):
            for i in rows_of[seq]:
                n, cont = len(seq), conts[i]
                # positions n-len(cont) .. n-1 predict the continuation tokens: (len(cont), V)
                lp = torch.log_softmax(torch.from_numpy(logits[r, n - len(cont):n]).float(), -1)
                target = torch.tensor(cont)
                out[i] = (float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
                done += 1
        if on_progress:
            on_progress(done, len(requests))
    return out  # type: ignore[return-value]


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def zero_shot(model, task: str | ZeroShotTask, *, data_root: str | Path = DEFAULT_DATA_ROOT,
              limit: int | None = None, batch_size: int = 8, device: str = "cpu", threads: int | None = None,
              on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Zero-shot accuracy of a causal LM on a multiple-choice task, lm-eval's `acc` and `acc_norm`.

    Chat/instruct models are scored on the raw prompt (no chat template), as lm-eval scores them by default.

    Args:
        model: a causal TorchModel or OnnxModel (with its tokenizer).
        task: a registered task name (`TASKS`: sst2, rte, emotion) or a `ZeroShotTask`.
        data_root: the folder holding `<task.folder>/<task.split>.jsonl`.
        limit: score the first `limit` examples only.
        batch_size: (prompt, choice) sequences per forward pass.
        device: "cpu" or "cuda".
        threads: ONNX Runtime intra-op threads.
        on_progress: callback(done, total) over (prompt, choice) sequences.
    Returns: {"task", "source", "prompt_origin", "examples", "accuracy", "accuracy_norm", "ci95": {"accuracy": [lo, hi],
              "accuracy_norm": [lo, hi]} (Wilson), "majority": the share of the most common gold choice,
              "per_choice": {choice: {"gold", "predicted", "predicted_norm", "correct", "correct_norm"}},
              "correct": 1/0 per example in order (for paired comparisons between models), "method"}.
    """
    spec = get_task(task)
    if getattr(model, "tokenizer", None) is None:
        raise CompressError(f"'{model.source}' has no tokenizer", "zero-shot tasks score text: load a model folder with its tokenizer")
    docs = load_documents(spec, data_root, limit)
    run = CausalRunner(model, device=device, threads=threads)
    k = len(spec.choices)
    requests = [encode_pair(model.tokenizer, prompt, spec.delimiter + choice) for prompt, _ in docs for choice in spec.choices]
    scores = loglikelihoods(run, requests, batch_size, on_progress)
    lls = np.array([s for s, _ in scores], np.float64).reshape(len(docs), k)  # (examples, choices)
    gold = np.array([g for _, g in docs])
    pred = lls.argmax(1)
    pred_norm = (lls / np.array([float(len(c)) for c in spec.choices])).argmax(1)
    n, correct, correct_norm = len(docs), int((pred == gold).sum()), int((pred_norm == gold).sum())
    per_choice = {c: {"gold": int((gold == j).sum()), "predicted": int((pred == j).sum()),
                      "predicted_norm": int((pred_norm == j).sum()), "correct": int(((pred == j) & (gold == j)).sum()),
                      "correct_norm": int(((pred_norm == j) & (gold == j)).sum())} for j, c in enumerate(spec.choices)}
    return {"task": spec.name, "source": str(spec.path(data_root)), "prompt_origin": spec.origin, "examples": n,
            "accuracy": correct / n, "accuracy_norm": correct_norm / n,
            "ci95": {"accuracy": list(wilson_interval(correct, n)), "accuracy_norm": list(wilson_interval(correct_norm, n))},
            "majority": max(v["gold"] for v in per_choice.values()) / n, "per_choice": per_choice,
            "correct": (pred == gold).astype(int).tolist(), "method": "lm-eval multiple_choice log-likelihood, zero-shot, raw prompt"}


# --- lm-eval itself (optional: pip install 'compress[eval]') -------------------------------------------------


def harness_lm(model, *, batch_size: int = 8, device: str = "cpu", threads: int | None = None):
    """An `lm_eval.api.model.LM` scoring `model` (PyTorch or ONNX) through `CausalRunner`, so lm-eval's own
    evaluator runs our models: `lm_eval.simple_evaluate(model=harness_lm(m), tasks=[harness_task("sst2")])`.
    lm-eval tokenizes (its `TemplateLM._encode_pair`); `loglikelihoods` scores. Loglikelihood tasks only.

    Args:
        model: a causal TorchModel or OnnxModel with its tokenizer.
        batch_size: sequences per forward pass.
        device: "cpu" or "cuda".
        threads: ONNX Runtime intra-op threads.
    """
    try:
        from lm_eval.api.model import TemplateLM
    except ImportError as e:
        raise CompressError("the lm-eval adapter needs lm-eval", "pip install 'compress[eval]'") from e
    run, tokenizer = CausalRunner(model, device=device, threads=threads), model.tokenizer

    class CompressLM(TemplateLM):
        backend = "causal"  # lm-eval: encode context + continuation whole, then split (our `encode_pair`)

        @property
        def eot_token_id(self):
            return tokenizer.eos_token_id

        @property
        def prefix_token_id(self):
            return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

        def tok_encode(self, string, add_special_tokens=None, **kwargs):
            return tokenizer.encode(string, **({} if add_special_tokens is None else
                                               {"add_special_tokens": add_special_tokens}))

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
            return loglikelihoods(run, [(ctx, cont) for _, ctx, cont in requests], batch_size)

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError("compress's lm-eval adapter scores loglikelihood (multiple-choice) tasks only")

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError("compress's lm-eval adapter scores loglikelihood (multiple-choice) tasks only")

    return CompressLM()


def harness_task(task: str | ZeroShotTask, data_root: str | Path = DEFAULT_DATA_ROOT) -> dict:
    """The lm-eval task config (a dict for `simple_evaluate(tasks=[...])`) of one of our tasks: the same JSONL
    file (HF `datasets`' json loader, offline), prompt, choices and label mapping; metrics acc and acc_norm."""
    spec = get_task(task)
    text = spec.template  # str.format fields -> jinja fields
    for name in spec.fields:
        text = text.replace("{" + name + "}", "{{" + name + "}}")
    return {"task": f"compress_{spec.name}", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"validation": str(spec.path(data_root))}},
            "output_type": "multiple_choice", "validation_split": "validation", "doc_to_text": text,
            "doc_to_target": "{{ " + f"{dict(spec.labels)!r}[{spec.label_field}]" + " }}",  # label -> choice index
            "doc_to_choice": list(spec.choices), "target_delimiter": spec.delimiter,
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}

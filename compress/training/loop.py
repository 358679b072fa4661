"""The one training loop (Hugging Face Accelerate), shared by `finetune`, `distill` and recovery after pruning.

The same code runs on one CPU, one GPU, or several processes under `accelerate launch`: every process builds
the same deterministic batch plan from `seed` and takes its own slice of it. What is trained is an
`Objective`: an `nn.Module` that holds the model being trained (and any extra trainable parts, such as
hidden-state projections) and turns a batch into a loss. Fine-tuning uses `cross_entropy_objective`;
distillation defines its own in `compress.techniques.distill`.

The loop: AdamW (no decay on biases and LayerNorm), linear warm-up then linear decay, gradient clipping,
evaluation after each epoch, the best epoch's weights kept, early stopping, a checkpoint every N steps that
`resume=True` continues from (same step, same batches, same random state), mixed precision on GPU only.
It never prints: progress goes to a `callback(event: dict)`; `RichProgress` is the bar the CLI uses.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from compress.core.config import StrictConfig
from compress.core.errors import CompressError
from compress.data.examples import text_lengths
from compress.models.artifacts import TorchModel

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
METRICS_FILE = "metrics.json"
# Settings that decide which batches come at which step: a checkpoint only resumes under the same ones.
PLAN_KEYS = ("batch_size", "seed", "max_length", "lr", "warmup_ratio", "weight_decay")


class TrainConfig(StrictConfig):
    """Hyperparameters of the shared training loop (finetune, distill, recovery)."""

    epochs: float = Field(3.0, gt=0, description="Passes over the training data (fractions allowed).")
    max_steps: int | None = Field(None, gt=0, description="Total optimizer steps; overrides `epochs` when set.")
    batch_size: int = Field(32, ge=1, description="Examples per step on each process.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and LayerNorm).")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of steps of linear warm-up; then linear decay to 0.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the global gradient norm to this; None = no clipping.")
    max_length: int = Field(128, ge=2, description="Token truncation length for text.")
    seed: int = Field(0, description="Seed of initialisation, batch order and dropout (runs are repeatable).")
    patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without improvement; None = never.")
    checkpoint_every: int | None = Field(None, ge=1, description="Save a resumable checkpoint every N steps; None = never.")
    resume: bool = Field(False, description="Continue from the checkpoint in the work folder when there is one.")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="auto = bf16 (or fp16) on a GPU, fp32 on CPU. Never used on CPU.")
    eval_batch_size: int = Field(64, ge=1, description="Batch size of the per-epoch evaluation.")


def objective_module(student, loss_fn: Callable, **extra):
    """Wrap the module being trained, and extra trainable modules, into the `nn.Module` the loop optimises.

    Args:
        student: the `nn.Module` being trained (a submodule, so it is optimised and checkpointed).
        loss_fn: `loss_fn(objective, batch) -> (loss, {name: detached tensor})`.
        **extra: more trainable modules (e.g. hidden-state projections), kept in `objective.extra`.
    """
    from torch import nn

    class Objective(nn.Module):
        def __init__(self):
            super().__init__()
            self.student = student
            self.extra = nn.ModuleDict(extra)

        def forward(self, batch):
            return loss_fn(self, batch)

    return Objective()


def cross_entropy_objective(model: TorchModel):
    """Supervised fine-tuning: cross-entropy between `model`'s logits and the labels."""
    from torch.nn import functional as F

    def loss_fn(objective, batch):
        loss = F.cross_entropy(model.logits(batch).float(), batch["labels"])
        return loss, {"ce": loss.detach()}

    return objective_module(model.module, loss_fn)


@contextlib.contextmanager
def resumable(checkpoint_every: int):
    """Within this block every `fit` saves a checkpoint each `checkpoint_every` steps (unless its config sets
    another interval) and resumes from the one in its work folder: the pipeline runs each stage in it, so a
    stage killed in the middle of training continues from its last checkpoint."""
    token = _STAGE_CHECKPOINTS.set(checkpoint_every)
    try:
        yield
    finally:
        _STAGE_CHECKPOINTS.reset(token)


_STAGE_CHECKPOINTS: contextvars.ContextVar[int | None] = contextvars.ContextVar("stage_checkpoints", default=None)


# --- batches ----------------------------------------------------------------------------------------------


def batch_plan(examples, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index arrays of one epoch: shuffled, then length-bucketed (sorted within chunks of 50 batches) so that
    dynamic padding wastes little, then the batches shuffled again. Deterministic in (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(examples))
    lengths = text_lengths(examples)
    if lengths is not None:
        chunk = batch_size * 50
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in np.split(order, range(chunk, len(order), chunk))])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def make_batch(model: TorchModel, examples, index: np.ndarray, max_length: int) -> dict:
    """The model-ready batch of `examples[index]`, plus `index` (rows into `examples`, for cached targets)."""
    import torch

    from compress.data.examples import iter_batches

    batch = next(iter_batches(model, examples.subset(index), batch_size=len(index), max_length=max_length))
    batch["index"] = torch.as_tensor(index, dtype=torch.long)
    return batch


# --- the loop -----------------------------------------------------------------------------------------------


def process_state():
    """This process's place in the job (rank, world size). On a machine without CUDA it must be created with
    `cpu=True`, else Accelerate ignores a multi-process CPU launch (torchrun / `accelerate launch`)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def make_accelerator(mixed_precision: str = "auto"):
    """An `Accelerator` for this process: mixed precision only on a GPU, whatever was asked on CPU."""
    import torch
    from accelerate import Accelerator

    if not torch.cuda.is_available():
        return Accelerator(mixed_precision="no", cpu=True)
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Accelerator(mixed_precision=mixed_precision)


def fit(model: TorchModel, objective, train, cfg: TrainConfig, workdir: Path, *, eval_examples=None,
        callback: Callable[[dict], None] | None = None, batcher: Callable[[np.ndarray], dict] | None = None,
        evaluator: Callable[[Any, str], dict] | None = None) -> dict:
    """Train `objective` (which holds `model.module`) on `train`; `model.module` ends with the best weights.

    Args:
        model: the model being trained (used to build batches and to evaluate).
        objective: an `nn.Module` whose `forward(batch)` returns `(loss, {name: detached tensor})`.
        train: training `Examples`.
        cfg: the loop's hyperparameters.
        workdir: where checkpoints go (`checkpoint.pt`, `best.pt`); removed again after a finished run.
        eval_examples: examples scored (accuracy) after each epoch, for model selection and early stopping.
        callback: receives events {"event": "start"|"step"|"eval"|"end", ...}; `RichProgress` draws a bar.
        batcher: `batcher(index) -> batch` instead of tokenizing `train` rows (e.g. packed token blocks).
        evaluator: `evaluator(model, device) -> dict` scoring the model after each epoch instead of accuracy on
            `eval_examples`; its "score" (higher is better) selects the best epoch.

    Returns:
        metrics: steps, epochs, per-epoch train loss and eval accuracy, best epoch, seconds, throughput.
    """
    import torch
    from accelerate.utils import set_seed

    if len(train) == 0:
        raise CompressError("the training data is empty", "check --data, --split and --limit")
    every = _STAGE_CHECKPOINTS.get()
    if every is not None:  # inside a pipeline stage: checkpoint and resume whatever the config says
        cfg = cfg.model_copy(update={"checkpoint_every": cfg.checkpoint_every or every, "resume": True})
    accelerator = make_accelerator(cfg.mixed_precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    callback = callback if accelerator.is_main_process else None
    set_seed(cfg.seed)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    # Each process takes every world-th batch; all take the same count so DDP steps stay in lockstep.
    steps_per_epoch = max(1, len(batch_plan(train, cfg.batch_size, cfg.seed, 0)) // world)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = int(cfg.warmup_ratio * total_steps)

    optimizer = torch.optim.AdamW(_param_groups(objective, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    # elapsed: training seconds before this process (checkpoints carry it; None after resuming from one that did not)
    state = {"step": 0, "history": {"train_loss": [], "epoch_loss": [], "eval": []}, "best": None, "stale": 0,
             "elapsed": 0.0}
    resumed = _maybe_resume(workdir, cfg, objective, optimizer, scheduler, state)
    # The scheduler is stepped by hand: Accelerate's wrapper would step it once per process.
    wrapped, optimizer = accelerator.prepare(objective, optimizer)
    trainable = [p for p in objective.parameters() if p.requires_grad]

    if callback:
        callback({"event": "start", "total_steps": total_steps, "step": state["step"], "epochs": epochs,
                  "world_size": world, "resumed_from_step": resumed})
    start, seen, tokens, stop = time.perf_counter(), 0, 0, False
    state["started"] = start
    batcher = batcher or (lambda index: make_batch(model, train, index, cfg.max_length))
    for epoch in range(state["step"] // steps_per_epoch, epochs):
        plan = batch_plan(train, cfg.batch_size, cfg.seed, epoch)[rank::world][:steps_per_epoch]
        wrapped.train()
        epoch_losses = []
        for i, index in enumerate(plan):
            if epoch * steps_per_epoch + i < state["step"]:
                continue  # resuming: these batches were trained on before the checkpoint
            batch = {k: v.to(accelerator.device) for k, v in batcher(index).items()}
            with accelerator.autocast():
                loss, parts = wrapped(batch)
            accelerator.backward(loss)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            seen += len(index) * world
            if "attention_mask" in batch:
                tokens += int(batch["attention_mask"].sum()) * world
            mean_loss = accelerator.reduce(loss.detach().float(), "mean").item()
            epoch_losses.append(mean_loss)
            state["history"]["train_loss"].append([state["step"], round(mean_loss, 6)])
            if callback:
                callback({"event": "step", "step": state["step"], "total_steps": total_steps, "loss": mean_loss,
                          "parts": {k: float(v) for k, v in parts.items()}, "lr": scheduler.get_last_lr()[0],
                          "examples_per_s": seen / (time.perf_counter() - start),
                          "tokens_per_s": tokens / (time.perf_counter() - start)})
            if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
                _save_checkpoint(accelerator, workdir, cfg, objective, optimizer, scheduler, state)
            if state["step"] >= total_steps:
                break
        state["history"]["epoch_loss"].append(float(np.mean(epoch_losses)) if epoch_losses else None)
        if eval_examples is not None or evaluator is not None:
            stop = _evaluate_epoch(accelerator, model, eval_examples, cfg, epoch, workdir, state, callback, evaluator)
        if stop or state["step"] >= total_steps:
            break

    accelerator.wait_for_everyone()
    if state["best"] is not None and (workdir / BEST_FILE).exists():
        model.module.load_state_dict(torch.load(workdir / BEST_FILE, map_location="cpu", weights_only=True))
    model.module.to("cpu").eval()
    seconds = time.perf_counter() - start
    metrics = {
        "steps": state["step"], "total_steps": total_steps, "epochs_run": len(state["history"]["epoch_loss"]),
        "world_size": world, "resumed_from_step": resumed, "early_stopped": stop,
        "train_loss": state["history"]["train_loss"], "epoch_loss": state["history"]["epoch_loss"],
        "eval": state["history"]["eval"],
        "best_epoch": state["best"]["epoch"] if state["best"] else None,
        "best_eval_accuracy": state["best"].get("accuracy") if state["best"] else None,
        "best_eval_score": state["best"]["score"] if state["best"] else None,
        "seconds": round(seconds, 2),  # this process; with seconds_total (all segments of a resumed run, None
        # when a checkpoint did not record its time) the wall time of the whole training
        "seconds_total": None if state["elapsed"] is None else round(state["elapsed"] + seconds, 2),
        "examples_per_s": round(seen / seconds, 2) if seconds > 0 else None,
        "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 and tokens else None,
        "mixed_precision": accelerator.mixed_precision,
    }
    if callback:
        callback({"event": "end", **metrics})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name in (CHECKPOINT_FILE, BEST_FILE):
            (workdir / name).unlink(missing_ok=True)
    return metrics


def _param_groups(objective, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices only (not on biases, LayerNorm or other 1-d parameters)."""
    decay, no_decay = [], []
    for p in objective.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _evaluate_epoch(accelerator, model, examples, cfg, epoch, workdir, state, callback, evaluator=None) -> bool:
    """Score the model after an epoch, keep the best weights on disk; True when early stopping triggers."""

    if evaluator is not None:
        model.module.eval()
        result = {"epoch": epoch + 1, "step": state["step"], **evaluator(model, str(accelerator.device))}
    else:
        from compress.data.examples import iter_batches
        from compress.evaluation.accuracy import score
        from compress.runtime.predict import predict

        logits, labels = predict(model, iter_batches(model, examples, cfg.eval_batch_size, cfg.max_length),
                                 device=str(accelerator.device))
        result = {"epoch": epoch + 1, "step": state["step"], **score(logits, labels, examples.num_labels)}
        if "accuracy" in result:
            result["score"] = result["accuracy"]
    state["history"]["eval"].append(result)
    if callback:
        callback({"event": "eval", **result})
    current = result.get("score")
    if current is None:
        return False  # unlabelled eval data: keep the last weights, no early stopping
    if state["best"] is None or current > state["best"]["score"]:
        state["best"], state["stale"] = {"epoch": epoch + 1, "score": current,
                                         **({"accuracy": result["accuracy"]} if "accuracy" in result else {})}, 0
        if accelerator.is_main_process:
            weights = {k: v.detach().cpu().clone() for k, v in model.module.state_dict().items()}
            _atomic_torch_save(weights, workdir / BEST_FILE)
        accelerator.wait_for_everyone()
    else:
        state["stale"] += 1
    return cfg.patience is not None and state["stale"] >= cfg.patience


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _save_checkpoint(accelerator, workdir, cfg, objective, optimizer, scheduler, state) -> None:
    """Everything needed to continue at `state["step"]`: weights, optimizer, schedule, history, RNG."""
    import torch

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _atomic_torch_save({
            "step": state["step"], "objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "history": state["history"], "best": state["best"],
            "stale": state["stale"], "rng": torch.get_rng_state(), "config": cfg.model_dump(mode="json"),
            "elapsed": None if state["elapsed"] is None else state["elapsed"] + time.perf_counter() - state["started"],
        }, workdir / CHECKPOINT_FILE)
    accelerator.wait_for_everyone()


def _maybe_resume(workdir, cfg, objective, optimizer, scheduler, state) -> int | None:
    """Load `workdir/checkpoint.pt` into the loop's objects when `cfg.resume`; returns the step resumed from."""
    import torch

    path = workdir / CHECKPOINT_FILE
    if not cfg.resume or not path.exists():
        if cfg.resume:
            log.info("no checkpoint in %s: starting from step 0", workdir)
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own file, written by _save_checkpoint
    changed = [k for k in PLAN_KEYS if ckpt["config"].get(k) != getattr(cfg, k)]
    if changed:
        raise CompressError(f"the checkpoint in '{workdir}' was written with other {', '.join(changed)}",
                            "resume with the same options, or delete the checkpoint to start over")
    objective.load_state_dict(ckpt["objective"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"])
    state.update(step=ckpt["step"], history=ckpt["history"], best=ckpt["best"], stale=ckpt["stale"],
                 elapsed=ckpt.get("elapsed"))
    return ckpt["step"]


# --- outputs -----------------------------------------------------------------------------------------------


def save_trained(model: TorchModel, out_dir: Path, metrics: dict) -> Path:
    """Write the trained model and `metrics.json` into `out_dir` atomically (temp folder, then rename).

    Hugging Face models: safetensors + config + tokenizer + manifest, loadable with `from_pretrained`.
    Plain modules: the same folder (builder manifest) plus `model.pt`, a plain state dict.
    """
    import torch

    from compress.core.paths import guard_output

    out_dir = Path(out_dir)
    guard_output(out_dir, [model.source])  # never over, into or around the model it started from
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if model.is_hf:
        # from_pretrained picks the class from `architectures`; a new head must not look like a bare encoder.
        model.module.config.architectures = [type(model.module).__name__]
    model.save(tmp)
    if not model.is_hf:
        torch.save({k: v.detach().cpu() for k, v in model.module.state_dict().items()}, tmp / "model.pt")
    (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=_json_default))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def _json_default(value: Any):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- progress ----------------------------------------------------------------------------------------------



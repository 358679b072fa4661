"""Token-level knowledge distillation for causal language models, behind `compress distill` and the `distill`
pass (and recovery after decoder pruning) when the models generate text.

Per position t that predicts a real next token:

    loss_t = α · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α) · CE(next token, z_s)

averaged over real (unpadded) positions, plus `hidden_weight` · MSE between (projected) student and teacher
hidden states of mapped layers when asked.

The teacher's distribution comes one of two ways (`teacher_logits`):
- `online`: a teacher forward pass at every step, full vocabulary, exact;
- `topk` (default): the teacher runs once over the transfer set and its k most likely tokens per position are
  cached on disk as log-probabilities at temperature T (i.e. the top-k logits minus the log-sum-exp), with the
  tokens. A 49k vocabulary makes full caching impossible (128 k tokens x 49,152 x 4 B = 25 GB); top-64 is
  128 k x 64 x 8 B = 66 MB. The KL is then taken over k + 1 outcomes (the k tokens and "any other token"), which
  is the exact KL of the two distributions with the tail merged into one bucket: a lower bound of the full KL
  that is close when the top k hold most of the mass. The run measures the gap on its first batch and
  reports it (`topk_check`). Students trained from one cache share it (two students, one teacher pass).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.core.errors import CompressError
from compress.data.causal import pack_blocks
from compress.evaluation.causal import block_perplexity, check_same_vocabulary
from compress.models.artifacts import TorchModel
from compress.techniques.distill.config import DistillSettings
from compress.techniques.distill.losses import hidden_state_loss
from compress.techniques.distill.run import layer_map
from compress.techniques.distill.teacher import default_cache_dir, fingerprint
from compress.training.loop import fit, objective_module, process_state
from compress.training.progress import RichProgress

log = logging.getLogger(__name__)


@dataclass
class TokenBlocks:
    """Packed training blocks (N, L) int64: what the training loop draws batches of rows from."""

    ids: np.ndarray
    texts = None  # no per-row text: the loop's length bucketing does not apply (every row is L tokens)

    def __len__(self) -> int:
        return len(self.ids)


# --- losses (pure functions) -------------------------------------------------------------------------------


def shift_for_next_token(logits, input_ids, attention_mask):
    """Align positions with what they predict: logits[:, :-1] score input_ids[:, 1:]; a position counts when
    both it and its target are real tokens. Returns (logits (B, T-1, V), targets (B, T-1), mask (B, T-1))."""
    mask = attention_mask[:, 1:] * attention_mask[:, :-1]
    return logits[:, :-1], input_ids[:, 1:], mask


def _masked_mean(values, mask):
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def token_kd_loss(student_logits, teacher_logits, targets, mask, temperature: float, alpha: float):
    """α · T² · KL(p_t ‖ p_s) + (1 − α) · CE per position, both averaged over positions where `mask` is 1.

    Args:
        student_logits, teacher_logits: (B, T, V), already aligned with `targets` (see `shift_for_next_token`).
        targets: (B, T) next-token ids.
        mask: (B, T) 1 where the position is a real token predicting a real token.
    Returns `(loss, {"kd": ..., "ce": ...})`.
    """
    import torch
    from torch.nn import functional as F

    ce = _masked_mean(F.cross_entropy(student_logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
                      .view(targets.shape), mask)
    if alpha == 0:
        return ce, {"kd": torch.zeros(()), "ce": ce.detach()}
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (B, T)
    kd = _masked_mean(kl, mask) * temperature**2
    return alpha * kd + (1 - alpha) * ce, {"kd": kd.detach(), "ce": ce.detach()}


def topk_kd_loss(student_logits, teacher_logp, teacher_idx, targets, mask, temperature: float, alpha: float):
    """As `token_kd_loss` with the teacher given by its top-k log-probabilities at temperature T.

    The KL runs over k + 1 outcomes: the k cached tokens and the rest merged ("tail"), for teacher and student:
    KL = Σ_k p_k (log p_k − log q_k) + p_tail (log p_tail − log q_tail).

    Args:
        teacher_logp: (B, T, k) log softmax(z_t / T) at the teacher's top-k tokens.
        teacher_idx: (B, T, k) those tokens.
    """
    import torch
    from torch.nn import functional as F

    ce = _masked_mean(F.cross_entropy(student_logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
                      .view(targets.shape), mask)
    if alpha == 0:
        return ce, {"kd": torch.zeros(()), "ce": ce.detach()}
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, teacher_idx.long())  # (B, T, k)
    log_p = teacher_logp.float()
    eps = 1e-8
    p_tail = (1 - log_p.exp().sum(-1)).clamp(min=eps)
    q_tail = (1 - log_q.exp().sum(-1)).clamp(min=eps)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1) + p_tail * (p_tail.log() - q_tail.log())
    kd = _masked_mean(kl, mask) * temperature**2
    return alpha * kd + (1 - alpha) * ce, {"kd": kd.detach(), "ce": ce.detach()}


# --- the teacher's top-k, cached -----------------------------------------------------------------------------


def teacher_topk(teacher: TorchModel, blocks: np.ndarray, k: int, temperature: float, cache_dir: Path,
                 batch_size: int = 8, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N, L-1, k) float32 log-probabilities at T and (N, L-1, k) int32 tokens of the teacher's top k at every
    predicting position of `blocks`, computed once and kept in `cache_dir` (keyed by weights, blocks, k, T)."""
    import torch

    h = hashlib.sha256(np.ascontiguousarray(blocks).tobytes()).hexdigest()[:16]
    key = f"{fingerprint(teacher)[:16]}-{h}-k{k}-T{temperature:g}"
    logp_path, idx_path = Path(cache_dir) / f"topk-{key}-logp.npy", Path(cache_dir) / f"topk-{key}-idx.npy"
    with process_state().main_process_first():
        if logp_path.exists() and idx_path.exists():
            log.info("teacher top-%d from cache %s", k, logp_path)
            return np.load(logp_path, mmap_mode="r"), np.load(idx_path, mmap_mode="r")
        n, length = blocks.shape
        logp = np.zeros((n, length - 1, k), np.float32)
        idx = np.zeros((n, length - 1, k), np.int32)
        module = teacher.module.eval()
        bar = _bar(progress, "teacher top-k", n)
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                ids = torch.from_numpy(blocks[start:start + batch_size])
                logits = module(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1].float()
                values, tokens = torch.log_softmax(logits / temperature, dim=-1).topk(k, dim=-1)
                logp[start:start + len(ids)], idx[start:start + len(ids)] = values.numpy(), tokens.int().numpy()
                bar(len(ids))
        bar(None)
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        for path, array in ((logp_path, logp), (idx_path, idx)):
            tmp = path.with_name(path.stem + f".tmp{np.random.randint(1 << 30)}.npy")
            np.save(tmp, array)
            tmp.replace(path)
        return logp, idx


def _bar(progress: bool, description: str, total: int):
    """A rich progress bar advanced by `advance(n)`; `advance(None)` closes it."""
    if not progress:
        return lambda n: None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(description, total=total)
    bar.start()

    def advance(n):
        if n is None:
            bar.stop()
        else:
            bar.advance(task, n)
    return advance


# --- the run -------------------------------------------------------------------------------------------------


def run_causal_distillation(student: TorchModel, teacher: TorchModel, texts: list[str], cfg: DistillSettings,
                            workdir: Path, eval_texts: list[str] | None = None, progress: bool = True,
                            cache_dir: Path | None = None, callback=None) -> dict:
    """Train `student.module` in place on `texts` by token-level KD from `teacher` (never modified).

    Args:
        student / teacher: causal LMs with the same tokenizer (checked: one-line error otherwise).
        texts: the transfer set, packed into `cfg.block_size`-token blocks (at most `cfg.max_blocks`).
        cfg: loss weights, teacher mode (`online` / `topk`) and loop hyperparameters.
        workdir: checkpoints and best weights.
        eval_texts: held-out text whose perplexity selects the best epoch (and is reported).
        cache_dir: where the teacher's top-k goes; default `~/.cache/compress/teacher-topk` (`COMPRESS_CACHE`).
    """
    import torch

    check_same_vocabulary(student, teacher)
    check_block_size(cfg.block_size, student, teacher)
    if cfg.attention_weight > 0:
        raise CompressError("attention-map matching is not available for causal LMs",
                            "set attention_weight 0 (hidden-state matching is: hidden_weight)")
    tokenizer = teacher.tokenizer
    blocks = pack_blocks(tokenizer, texts, cfg.block_size, cfg.max_blocks)
    eval_blocks = pack_blocks(tokenizer, eval_texts, cfg.block_size, cfg.eval_blocks) if eval_texts else None
    train = TokenBlocks(blocks)
    want_hidden = cfg.hidden_weight > 0
    online = cfg.teacher_logits == "online" or want_hidden  # hidden states cannot be cached cheaply
    teacher.module.eval()
    cached = None
    check: dict = {}
    if cfg.alpha > 0 and not online:
        cached = teacher_topk(teacher, blocks, cfg.top_k, cfg.temperature, Path(cache_dir or default_cache_dir("teacher-topk")),
                              progress=progress)
        check = topk_gap(student, teacher, blocks[: min(4, len(blocks))], cfg)
    mapped = layer_map(student, teacher, cfg) if want_hidden else []
    extra = {}
    if want_hidden and student.module.config.hidden_size != teacher.module.config.hidden_size:
        extra["projection"] = torch.nn.Linear(student.module.config.hidden_size, teacher.module.config.hidden_size)

    def batcher(index):
        ids = torch.from_numpy(np.ascontiguousarray(blocks[index]))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "index": torch.as_tensor(index)}

    def loss_fn(objective, batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = objective.student(input_ids=ids, attention_mask=mask, output_hidden_states=want_hidden)
        logits, targets, positions = shift_for_next_token(out.logits, ids, mask)
        t_out = None
        if online and (cfg.alpha > 0 or want_hidden):
            with torch.no_grad():
                teacher.module.to(ids.device)
                t_out = teacher.module(input_ids=ids, attention_mask=mask, output_hidden_states=want_hidden)
        if cfg.alpha > 0 and not online:
            rows = batch["index"].cpu().numpy()
            logp = torch.from_numpy(np.ascontiguousarray(cached[0][rows])).to(ids.device)
            idx = torch.from_numpy(np.ascontiguousarray(cached[1][rows])).to(ids.device)
            loss, parts = topk_kd_loss(logits, logp, idx, targets, positions, cfg.temperature, cfg.alpha)
        else:
            t_logits = t_out.logits[:, :-1] if t_out is not None else None
            loss, parts = token_kd_loss(logits, t_logits, targets, positions, cfg.temperature, cfg.alpha)
        if want_hidden:  # hidden_states[0] is the embedding output, layer i's output is [i + 1]
            h = hidden_state_loss([out.hidden_states[i + 1] for i in range(len(mapped))],
                                  [t_out.hidden_states[m + 1] for m in mapped], mask,
                                  objective.extra["projection"] if "projection" in objective.extra else None)
            loss, parts["hidden"] = loss + cfg.hidden_weight * h, h.detach()
        return loss, parts

    evaluator = (lambda model, device: block_perplexity(model, eval_blocks, device)) if eval_blocks is not None else None
    before = block_perplexity(student, eval_blocks) if eval_blocks is not None else None
    if callback is None and progress:
        callback = RichProgress("distill" if cfg.alpha > 0 else "train (CE)", tokens=True)
    metrics = fit(student, objective_module(student.module, loss_fn, **extra), train, cfg, workdir,
                  callback=callback, batcher=batcher, evaluator=evaluator)
    teacher.module.to("cpu")
    # The loop scored every epoch and kept the best weights: that evaluation is the final perplexity.
    after = min((e["perplexity"] for e in metrics["eval"]), default=None)
    # Tokens the kept checkpoint saw (the best epoch's step count), which is what an equal-tokens comparison needs;
    # the budget is what the whole run trained on.
    tokens_per_step = cfg.batch_size * cfg.block_size
    best = min(metrics["eval"], key=lambda e: e["perplexity"], default=None)
    return {**metrics, "objective": "kd" if cfg.alpha > 0 else "ce", "alpha": cfg.alpha,
            "temperature": cfg.temperature, "teacher_logits": ("online" if online else f"top-{cfg.top_k}")
            if cfg.alpha > 0 else None, "topk_check": check or None,
            "train_blocks": len(blocks), "block_size": cfg.block_size, "train_tokens_available": int(blocks.size),
            "token_budget": metrics["steps"] * tokens_per_step,
            "tokens_seen": (best["step"] if best else metrics["steps"]) * tokens_per_step,
            "tokens_seen_epoch": best["epoch"] if best else None,
            "heldout_perplexity_before": before and before["perplexity"],
            "heldout_perplexity_after": after,
            "layer_map": mapped or None, "student_params": student.num_parameters(),
            "teacher_params": teacher.num_parameters()}


def check_block_size(block_size: int, *models: TorchModel) -> None:
    """Training blocks fit every model's context (max_position_embeddings): one line before any work, not a crash
    in the position embeddings mid-run."""
    from compress.models.causal import context_length

    contexts = [(context_length(m), m) for m in models]
    limit, model = min(((c, m) for c, m in contexts if c is not None), key=lambda x: x[0], default=(None, None))
    if limit is not None and block_size > limit:
        name = getattr(model, "source", None) or "the model"
        raise CompressError(f"--block-size {block_size} is longer than the context of {name} ({limit} tokens)",
                            f"pass --block-size {limit} or less")


def topk_gap(student: TorchModel, teacher: TorchModel, blocks: np.ndarray, cfg: DistillSettings) -> dict:
    """How far the top-k KL is from the full-vocabulary KL, measured on a few blocks with the untrained student:
    the KD term both ways, their relative gap, and the teacher mass the top k hold."""
    import torch

    ids = torch.from_numpy(np.ascontiguousarray(blocks))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        s = student.module.eval()(input_ids=ids, attention_mask=mask).logits
        t = teacher.module.eval()(input_ids=ids, attention_mask=mask).logits
        s, targets, positions = shift_for_next_token(s, ids, mask)
        t = t[:, :-1]
        values, tokens = torch.log_softmax(t.float() / cfg.temperature, -1).topk(cfg.top_k, -1)
        _, full = token_kd_loss(s, t, targets, positions, cfg.temperature, 1.0)
        _, topk = topk_kd_loss(s, values, tokens, targets, positions, cfg.temperature, 1.0)
    kd_full, kd_topk = float(full["kd"]), float(topk["kd"])
    return {"k": cfg.top_k, "kd_full": kd_full, "kd_topk": kd_topk,
            "relative_gap": (kd_full - kd_topk) / kd_full if kd_full > 0 else 0.0,
            "teacher_mass_in_topk": float(values.exp().sum(-1).mean()), "blocks": len(blocks)}

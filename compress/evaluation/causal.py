"""Scores of a causal language model, computed the same way for PyTorch and ONNX Runtime (`CausalRunner`):

- perplexity: exp of the mean next-token negative log-likelihood over every predicted position of every
  held-out block (token-weighted; all positions are real tokens, see `compress.data.causal.pack_blocks`);
- against a reference (the teacher): mean per-token KL(reference ‖ model) over the same positions, next-token
  top-1 agreement, and greedy-generation agreement: the mean length of the common prefix of the two models'
  greedy continuations of a fixed prompt set (`max_new_tokens` each, never stopped early).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compress.core.errors import CompressError
from compress.runtime.causal import CausalRunner, generate_greedy


def _log_probs(logits: np.ndarray):
    import torch

    return torch.log_softmax(torch.from_numpy(logits[:, :-1]).float(), -1)  # (B, T-1, V): predicts ids[:, 1:]


def common_prefix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, how many leading tokens two (B, N) generations share."""
    same = a == b
    return np.where(same.all(1), a.shape[1], same.argmin(1))


def evaluate_causal(model, blocks: np.ndarray, *, reference=None, prompts: list[list[int]] | None = None,
                    max_new_tokens: int = 32, batch_size: int = 4, device: str = "cpu", threads: int | None = None,
                    reference_generations: np.ndarray | None = None, reference_cache: dict | None = None,
                    on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Perplexity of `model` on token `blocks` (N, T); with `reference`, KL, top-1 and greedy agreement.

    Args:
        model: a causal TorchModel or OnnxModel.
        blocks: (N, T) int64 token blocks (`compress.data.causal.text_blocks`).
        reference: the model to compare with (usually the teacher); must share the tokenizer.
        prompts: token ids of the generation prompts (`compress.data.causal.prompt_ids`); None skips generation.
        max_new_tokens: greedy tokens generated per prompt.
        batch_size: blocks per forward pass.
        reference_generations: the reference's greedy tokens when already known (the pipeline caches them).
        reference_cache: a dict that keeps the reference's log-probs per batch across calls (budget searches
            score many variants of one model on the same blocks).
        on_progress: callback(done, total) over blocks.
    Returns: {"perplexity", "nll", "tokens", "blocks", "block_size", and with a reference "kl", "top1_agreement",
              "greedy_prefix", "greedy_agreement" (prefix / max_new_tokens), plus "generations" (list of lists)}.
    """
    import torch

    if blocks.ndim != 2 or len(blocks) == 0:
        raise CompressError("no held-out text blocks to score", "pass more text (--data) or a smaller --block-size")
    run = CausalRunner(model, device=device, threads=threads)
    run.check_length(blocks.shape[1])
    ref = CausalRunner(reference, device=device, threads=threads) if reference is not None else None
    if ref is not None:
        check_same_vocabulary(model, reference)
    nll_sum, kl_sum, agree, count = 0.0, 0.0, 0, 0
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start:start + batch_size]
        logits, _ = run.forward(ids)
        lp = _log_probs(logits)
        target = torch.from_numpy(ids[:, 1:])
        nll_sum += float(-lp.gather(-1, target[..., None]).sum())
        count += target.numel()
        if ref is not None:
            if reference_cache is not None and start in reference_cache:
                ref_lp = reference_cache[start]
            else:
                ref_lp = _log_probs(ref.forward(ids)[0])
                if reference_cache is not None:
                    reference_cache[start] = ref_lp
            kl_sum += float((ref_lp.exp() * (ref_lp - lp)).sum())
            agree += int((ref_lp.argmax(-1) == lp.argmax(-1)).sum())
        if on_progress:
            on_progress(min(start + batch_size, len(blocks)), len(blocks))
    nll = nll_sum / count
    out: dict = {"perplexity": float(np.exp(nll)), "nll": nll, "tokens": int(count), "blocks": int(len(blocks)),
                 "block_size": int(blocks.shape[1])}
    if ref is not None:
        out.update({"kl": max(kl_sum / count, 0.0), "top1_agreement": agree / count})  # float rounding: -1e-9
    if prompts:
        generations = generate_greedy(run, prompts, max_new_tokens)
        out["generations"] = generations.tolist()
        if reference_generations is None and ref is not None:
            reference_generations = generate_greedy(ref, prompts, max_new_tokens)
        if reference_generations is not None:
            prefix = common_prefix(generations, np.asarray(reference_generations))
            out.update({"greedy_prefix": float(prefix.mean()), "greedy_agreement": float(prefix.mean() / max_new_tokens),
                        "greedy_new_tokens": max_new_tokens, "greedy_prompts": len(prompts)})
    return out


def block_perplexity(model, blocks: np.ndarray, device: str = "cpu", batch_size: int = 8) -> dict:
    """Token-weighted perplexity of a PyTorch causal `model` on packed blocks (every token real): the module
    straight, no runner and no KV cache, for the loops that score many times (epoch selection in training, the
    greedy layer search in `compress.techniques.prune.causal`)."""
    import torch
    from torch.nn import functional as F

    total, count = 0.0, 0
    module = model.module.to(device).eval()
    with torch.inference_mode():
        for start in range(0, len(blocks), batch_size):
            ids = torch.from_numpy(np.ascontiguousarray(blocks[start:start + batch_size])).to(device)
            logits = module(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[:, :-1].float()
            total += float(F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
            count += ids[:, 1:].numel()
    nll = total / count
    return {"perplexity": float(np.exp(nll)), "nll": nll, "tokens": count, "score": -nll}


def check_same_vocabulary(model, reference) -> None:
    """Comparing next-token distributions needs one tokenizer: same vocabulary size and the same ids."""
    a, b = model.tokenizer, reference.tokenizer
    if a is None or b is None:
        return
    if len(a) != len(b) or a.get_vocab() != b.get_vocab():
        raise CompressError(f"the model and the reference use different tokenizers ({len(a)} vs {len(b)} tokens)",
                            "compare models that share a tokenizer (e.g. a student with its teacher)")

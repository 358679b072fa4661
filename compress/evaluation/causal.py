"""Scores of a causal language model, computed the same way for PyTorch and ONNX Runtime (`CausalRunner`):

- per-document perplexity (`score_documents`), the lm-evaluation-harness way (its `loglikelihood_rolling`, as
  for WikiText): each document on its own after one separator token that is context only, long documents in
  rolling windows, no target crossing a document boundary; with bits per byte and word perplexity beside it;
- block perplexity (`evaluate_causal`): exp of the mean next-token negative log-likelihood over every predicted
  position of packed blocks (token-weighted; see `compress.data.causal.pack_blocks`), for loops that score
  many variants on the same blocks;
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
              "reference_perplexity" (the reference's, from the same forward passes),
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
    nll_sum, ref_nll_sum, kl_sum, agree, count = 0.0, 0.0, 0.0, 0, 0
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
            ref_nll_sum += float(-ref_lp.gather(-1, target[..., None]).sum())
            kl_sum += float((ref_lp.exp() * (ref_lp - lp)).sum())
            agree += int((ref_lp.argmax(-1) == lp.argmax(-1)).sum())
        if on_progress:
            on_progress(min(start + batch_size, len(blocks)), len(blocks))
    nll = nll_sum / count
    out: dict = {"perplexity": float(np.exp(nll)), "nll": nll, "tokens": int(count), "blocks": int(len(blocks)),
                 "block_size": int(blocks.shape[1])}
    if ref is not None:
        out.update({"kl": max(kl_sum / count, 0.0), "top1_agreement": agree / count,  # float rounding: -1e-9
                    "reference_perplexity": float(np.exp(ref_nll_sum / count))})
    if prompts:
        out.update(greedy_agreement(run, prompts, max_new_tokens, reference=ref,
                                    reference_generations=reference_generations))
    return out


def greedy_agreement(run: CausalRunner, prompts: list[list[int]], max_new_tokens: int, *,
                     reference: CausalRunner | None = None, reference_generations: np.ndarray | None = None) -> dict:
    """Greedy continuations of `prompts` and, with a reference (runner or its known generations), the mean common
    prefix of the two.

    Returns: {"generations" (list of lists), and with a reference "greedy_prefix", "greedy_agreement" (prefix /
              max_new_tokens), "greedy_new_tokens", "greedy_prompts"}.
    """
    generations = generate_greedy(run, prompts, max_new_tokens)
    out: dict = {"generations": generations.tolist()}
    if reference_generations is None and reference is not None:
        reference_generations = generate_greedy(reference, prompts, max_new_tokens)
    if reference_generations is not None:
        prefix = common_prefix(generations, np.asarray(reference_generations))
        out.update({"greedy_prefix": float(prefix.mean()), "greedy_agreement": float(prefix.mean() / max_new_tokens),
                    "greedy_new_tokens": max_new_tokens, "greedy_prompts": len(prompts)})
    return out


# --- per-document perplexity ------------------------------------------------------------------------------------


def rolling_windows(tokens: list[int], separator_id: int, window: int) -> list[tuple[list[int], int]]:
    """lm-evaluation-harness's rolling windows of one document (`get_rolling_token_windows` with
    `context_len=1`, then `make_disjoint_window`), as (sequence, targets) pairs: the model reads `sequence[:-1]`
    (at most `window` tokens) and its last `targets` predictions are scored against `sequence[-targets:]`.

    The first window starts with the separator (context only) and predicts the first `window` tokens; each next
    window predicts the next `window` tokens (or the rest) after the tokens before them, so every token of the
    document is a target exactly once, and the last window reads as much earlier text as fits.
    """
    n = len(tokens)
    if n == 0:
        return []
    first = min(window, n)
    out = [([separator_id] + tokens[:first], first)]
    done = first
    while done < n:
        k = min(n - done, window)
        end = done + k
        out.append((tokens[end - window - 1:end], k))  # end >= window + 1: the slice never starts before 0
        done = end
    return out


def score_documents(model, texts: list[str], *, window: int, separator_id: int, batch_size: int = 8,
                    reference=None, device: str = "cpu", threads: int | None = None,
                    on_progress: Callable[[int, int], None] | None = None, runner=None, reference_runner=None) -> dict:
    """Per-document perplexity of `model` on `texts`, the lm-evaluation-harness way; with `reference`, KL and top-1
    agreement over the same target positions.

    Each document is scored on its own: input = [separator] + its tokens (encoded without special tokens); the
    separator is context only, never a target; documents longer than `window` go in rolling windows
    (`rolling_windows`). Windows are sorted by length and batched right-padded through `CausalRunner.forward`
    (the attention mask hides the padding, which sits after every real token of a causal row), so PyTorch and
    ONNX Runtime score identically and padding never changes a document's score.

    Args:
        model: a causal TorchModel or OnnxModel.
        texts: the documents (empty ones, and ones with no token, are skipped).
        window: the most tokens the model reads per forward pass (at most its context length).
        runner: something with `forward(ids, mask) -> (logits, _)` and `check_length(n)` that stands in for the
            model's own runner (a runner made once for several calls, or a peer runtime:
            `compress.pipeline.peers.PeerForward`); `model` then only gives the tokenizer.
        reference_runner: the reference's runner, made once by a caller that scores several domains.
        separator_id: the token before every document (`compress.data.causal.document_separator`).
        batch_size: windows per forward pass.
        reference: the model to compare with (usually the teacher); must share the tokenizer.
        device: "cpu" or "cuda".
        threads: ONNX Runtime intra-op threads.
        on_progress: callback(done, total) over documents.
    Returns: {"perplexity" (token-weighted), "nll" (mean nats per token), "tokens", "documents", "windows",
              "window", "separator_id", "bytes" (UTF-8 bytes of the scored documents), "words",
              "bits_per_byte" (total nats / ln 2 / bytes), "byte_perplexity", "word_perplexity"
              (exp(total nats / words)), and with a reference "kl" (mean per-token KL(reference ‖ model)) and
              "top1_agreement"}.
    """
    if window < 1:
        raise CompressError(f"scoring window {window} is too small", "use a window of at least 1 token")
    run = runner if runner is not None else CausalRunner(model, device=device, threads=threads)
    run.check_length(window)
    ref = reference_runner
    if ref is None and reference is not None:
        ref = CausalRunner(reference, device=device, threads=threads)
    if ref is not None:
        check_same_vocabulary(model, reference)
    docs = [t for t in texts if t and t.strip()]
    encoded = [model.tokenizer(docs[i:i + 256], add_special_tokens=False, verbose=False)["input_ids"]
               for i in range(0, len(docs), 256)]
    pairs = [(text, ids) for text, ids in zip(docs, [ids for chunk in encoded for ids in chunk], strict=True) if ids]
    if not pairs:
        raise CompressError("no document to score", "pass text data with non-empty texts (--data)")
    windows = [(d, seq, k) for d, (_, ids) in enumerate(pairs) for seq, k in rolling_windows(ids, separator_id, window)]
    windows.sort(key=lambda w: -len(w[1]))  # longest first: the largest batch runs first, padding stays small
    left = np.bincount([w[0] for w in windows], minlength=len(pairs))  # windows still to score per document
    nll_doc = np.zeros(len(pairs))
    kl_sum, agree, done = 0.0, 0, 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        rows, cols, targets, owner = _target_positions(batch)
        ids, mask = _right_pad([seq[:-1] for _, seq, _ in batch], pad_id=separator_id)
        lp = _target_log_probs(run, ids, mask, rows, cols)  # (M, V) for the M target positions of the batch
        nll = -lp.gather(-1, targets[:, None])[:, 0].double().numpy()
        np.add.at(nll_doc, owner, nll)
        if ref is not None:
            ref_lp = _target_log_probs(ref, ids, mask, rows, cols)
            kl_sum += float((ref_lp.exp() * (ref_lp - lp)).sum())
            agree += int((ref_lp.argmax(-1) == lp.argmax(-1)).sum())
        for d in (w[0] for w in batch):
            left[d] -= 1
            done += int(left[d] == 0)
        if on_progress:
            on_progress(done, len(pairs))
    tokens = sum(len(ids) for _, ids in pairs)
    n_bytes = sum(len(text.encode("utf-8")) for text, _ in pairs)
    words = sum(len(text.split()) for text, _ in pairs)
    total = float(nll_doc.sum())
    out: dict = {"perplexity": float(np.exp(total / tokens)), "nll": total / tokens, "tokens": int(tokens),
                 "documents": len(pairs), "windows": len(windows), "window": int(window),
                 "separator_id": int(separator_id), "bytes": int(n_bytes), "words": int(words),
                 "bits_per_byte": float(total / np.log(2) / n_bytes), "byte_perplexity": float(np.exp(total / n_bytes)),
                 "word_perplexity": float(np.exp(total / max(words, 1)))}
    if ref is not None:
        out.update({"kl": max(kl_sum / tokens, 0.0), "top1_agreement": agree / tokens})  # float rounding: -1e-9
    return out


def _right_pad(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids and mask (B, T): in a causal model no real token attends to padding after it."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, np.int64)
    mask = np.zeros((len(sequences), width), np.int64)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask


def _target_positions(batch: list[tuple[int, list[int], int]]):
    """For a batch of (document, sequence, targets) windows: the (row, column) of every scored logit, its target
    token and its document, as flat arrays (the logit at column t predicts sequence[t + 1])."""
    import torch

    rows, cols, targets, owner = [], [], [], []
    for r, (d, seq, k) in enumerate(batch):
        n = len(seq) - 1  # tokens the model reads
        rows += [r] * k
        cols += range(n - k, n)
        targets += seq[n - k + 1:]
        owner += [d] * k
    return (torch.tensor(rows), torch.tensor(cols), torch.tensor(targets, dtype=torch.int64), np.asarray(owner))


def _target_log_probs(run: CausalRunner, ids: np.ndarray, mask: np.ndarray, rows, cols):
    """Log-probabilities (M, V) float32 at the scored positions only (no log-softmax over padding)."""
    import torch

    logits, _ = run.forward(ids, mask)
    return torch.log_softmax(torch.from_numpy(logits)[rows, cols].float(), -1)


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

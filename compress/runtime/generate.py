"""Generate text with a causal LM, PyTorch or ONNX Runtime: a prompt (through the chat template of an instruct
model), then the KV-cache decode loop of a `CausalRunner`, greedy or sampled, streamed as text while it runs.

The runner is built by the caller (`generate(CausalRunner(model), "...")`): one ONNX session serves many prompts,
and this module stays a neighbour of `compress.runtime.causal` that the decode loop does not depend on.
Greedy decoding takes `CausalRunner.next_tokens` (the argmax on the backend's own device), so its tokens are
exactly `CausalRunner.greedy`'s; sampling reads the last position's logits and draws with a seeded numpy Generator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from compress.core.errors import CompressError
from compress.data.causal import prompt_ids

# Tokens that end a turn or a document in common vocabularies (ChatML, Llama 3, Phi-3, Gemma, GPT-2 style):
# generation stops at any of them that the vocabulary holds, besides the tokenizer's and the model's EOS.
END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclass(frozen=True)
class GenerationResult:
    """What one `generate` call produced.

    Args:
        text: the generated text (the stop token and other special tokens left out).
        token_ids: the generated token ids, the stop token included when generation stopped at one.
        prompt_tokens: length of the prompt in tokens (after the chat template).
        stop_reason: "eos" (a stop token), "length" (max_new_tokens) or "context" (the model's context is full).
        seconds: wall time from the start of the prefill to the last token.
        ttft_seconds: time to first token: the prefill and the choice of the first token.
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    stop_reason: str
    seconds: float
    ttft_seconds: float

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed: tokens after the first per second after the first (None for a single token)."""
        decode = self.seconds - self.ttft_seconds
        return (len(self.token_ids) - 1) / decode if len(self.token_ids) > 1 and decode > 0 else None


def check_prompt(prompt: str) -> None:
    """Reject an empty prompt (the CLI calls it before loading a model)."""
    if not prompt or not prompt.strip():
        raise CompressError("the prompt is empty", "pass the text to continue, or a question for an instruct model")


def encode_prompt(tokenizer, prompt: str, chat: bool | None = None) -> list[int]:
    """Token ids of `prompt`: through the chat template (a user turn, then the assistant's opening) when `chat`,
    or when `chat` is None and the tokenizer has a template; else the raw text with the tokenizer's own special
    tokens (e.g. BOS)."""
    check_prompt(prompt)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has_template:
        raise CompressError("the model's tokenizer has no chat template", "drop --chat to send the raw text")
    return [int(i) for i in prompt_ids(tokenizer, [prompt], chat=has_template if chat is None else chat)[0]]


def stop_ids(runner) -> set[int]:
    """Token ids that end generation: the tokenizer's EOS, the model's generation config EOS (one id or a list),
    and the end-of-turn / end-of-text tokens of `END_TOKENS` that the vocabulary holds."""
    tokenizer = runner.model.tokenizer
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if runner.is_onnx:
        path = runner.model.folder / "generation_config.json"
        eos = json.loads(path.read_text()).get("eos_token_id") if path.exists() else None
    else:
        eos = getattr(getattr(runner.model.module, "generation_config", None), "eos_token_id", None)
    ids.update(int(i) for i in ([] if eos is None else eos if isinstance(eos, list) else [eos]))
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[t]) for t in END_TOKENS if t in vocab)
    return ids


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_k: int | None = None,
           top_p: float | None = None) -> int:
    """One token id drawn from `logits` (V,): softmax at `temperature`, kept to the `top_k` most likely tokens, then
    to the smallest set whose probability reaches `top_p` (nucleus), renormalised."""
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z[z < kth] = -np.inf
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        before = np.cumsum(probs[order]) - probs[order]  # mass of the more likely tokens: the first is always kept
        probs[order[before >= top_p]] = 0.0
        probs /= probs.sum()
    # Inverse CDF on one uniform draw: the same seed, the same token, whatever numpy's choice() does internally.
    return int(min(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"), probs.size - 1))


class TextStream:
    """Incremental detokenization: decode the whole generated list each step and hand out the new suffix, so
    byte-level BPE pieces and multi-byte characters come out whole (a trailing U+FFFD means "wait for more")."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.shown = ""

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, ids: list[int], final: bool = False) -> str:
        """The text not shown yet after decoding `ids` ("" while a character is incomplete)."""
        text = self.text(ids)
        if (text.endswith("\ufffd") and not final) or not text.startswith(self.shown):
            return ""  # (a decoder's cleanup can rewrite earlier text; it is flushed once it is stable again)
        piece, self.shown = text[len(self.shown):], text
        return piece


def _check_options(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if max_new_tokens < 1:
        raise CompressError(f"max_new_tokens is {max_new_tokens}", "ask for at least one new token")
    if temperature < 0:
        raise CompressError(f"temperature is {temperature}", "use 0 for greedy decoding or a positive temperature")
    if top_k is not None and top_k < 1:
        raise CompressError(f"top_k is {top_k}", "keep at least one token (top_k >= 1), or leave it unset")
    if top_p is not None and not 0 < top_p <= 1:
        raise CompressError(f"top_p is {top_p}", "use a probability mass in (0, 1], or leave it unset")


def generate(runner, prompt: str, *, max_new_tokens: int = 128, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, seed: int = 0, chat: bool | None = None,
             on_token: Callable[[int, str], None] | None = None) -> GenerationResult:
    """Continue `prompt` with the runner's model, batch 1, KV cache; stop at a stop token (`stop_ids`), after
    `max_new_tokens`, or when the model's context is full.

    Args:
        runner: a `compress.runtime.causal.CausalRunner` (PyTorch or ONNX Runtime).
        prompt: the text to continue, or the user's message for an instruct model.
        max_new_tokens: most tokens to generate (the stop token included).
        temperature: 0 is greedy decoding (exactly `CausalRunner.greedy`); above 0 samples.
        top_k: sample among the k most likely tokens only (None: all).
        top_p: sample from the smallest set of tokens whose probability reaches top_p (None: all).
        seed: seed of the numpy Generator that samples: the same seed, the same text.
        chat: send the prompt through the tokenizer's chat template (None: when it has one).
        on_token: called as on_token(token_id, new_text) once per generated token; new_text is what the token adds
            to the decoded text ("" while a multi-byte character is incomplete; the last call flushes it).
    Raises:
        CompressError: an empty prompt, bad sampling options, a chat request without a template, or a prompt that
            leaves no room in the model's context.
    """
    _check_options(max_new_tokens, temperature, top_k, top_p)
    tokenizer = runner.model.tokenizer
    ids = encode_prompt(tokenizer, prompt, chat)
    # Never run past the context: the prompt must leave room for one token, and generation stops when it is full.
    room = max_new_tokens if runner.context is None else runner.context - len(ids)
    if room < 1:
        raise CompressError(f"the prompt of {len(ids)} tokens leaves no room in the model's context of "
                            f"{runner.context} tokens", "shorten the prompt")
    new_tokens = min(max_new_tokens, room)
    runner.check_length(len(ids) + new_tokens)
    stops, stream, rng = stop_ids(runner), TextStream(tokenizer), np.random.default_rng(seed)

    def step(tokens: np.ndarray, mask: np.ndarray, past):
        """Next token id after `tokens` (1, T) with the cache `past`, and the updated cache."""
        if temperature == 0:
            token, past = runner.next_tokens(tokens, mask, past)
            return int(token[0]), past
        logits, past = runner.forward(tokens, mask, past)
        return sample(logits[0, -1], rng, temperature, top_k, top_p), past

    out: list[int] = []
    stop_reason = "context" if new_tokens < max_new_tokens else "length"
    start = time.perf_counter()
    token, past = step(np.asarray([ids], np.int64), np.ones((1, len(ids)), np.int64), None)
    ttft = time.perf_counter() - start
    while True:
        out.append(token)
        stopped = token in stops
        last = stopped or len(out) == new_tokens
        if on_token is not None:  # the stop token adds no text; the last call flushes a held-back character
            on_token(token, stream.push(out[:-1] if stopped else out, final=last))
        if last:
            break
        mask = np.ones((1, len(ids) + len(out)), np.int64)  # batch 1, no padding: past + the new token
        token, past = step(np.asarray([[token]], np.int64), mask, past)
    seconds = time.perf_counter() - start
    if stopped:
        stop_reason = "eos"
    text_ids = out[:-1] if stopped else out
    return GenerationResult(text=stream.text(text_ids), token_ids=out, prompt_tokens=len(ids),
                            stop_reason=stop_reason, seconds=seconds, ttft_seconds=ttft)

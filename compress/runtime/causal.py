"""Run a causal language model, PyTorch or ONNX Runtime, through one interface: full-sequence logits, prefill,
one decode step with the KV cache, and greedy generation. Perplexity/KL scoring, export parity, quantization
budgets and the decoder benchmark all go through `CausalRunner`, so the two backends are measured the same way.

The ONNX side takes both decoder graphs `compress export` writes: optimum's `text-generation-with-past` (inputs
`input_ids`, `attention_mask` (past + new length), `position_ids`, `past_key_values.{i}.key|value` of shape
(batch, kv_heads, past, head_dim); outputs `logits` and `present.{i}.key|value`) and onnxruntime-genai's fused
graph (the same names without `position_ids`: GroupQueryAttention derives positions from the mask).

ONNX Runtime runs through I/O binding on every device: the cache stays in ONNX Runtime's own buffers (OrtValues)
from one step to the next, never copied into numpy, and only the logits come back as an array.
"""

from __future__ import annotations

import numpy as np

from compress.core.errors import CompressError
from compress.models.artifacts import OnnxModel, TorchModel
from compress.models.causal import context_length, is_causal


class CausalRunner:
    """`CausalRunner(model)`: the same calls for a causal TorchModel and a causal OnnxModel.

    Token ids and masks are numpy int64 arrays; `past` is the backend's own cache object (opaque to callers).

    Args:
        model: a causal LM (`task == "text-generation"`).
        device: "cpu" or "cuda".
        threads: ONNX Runtime intra-op threads (torch threads are set by the caller).
        profile_dir: ONNX only: run the session with ONNX Runtime's profiler writing there.
    """

    def __init__(self, model: TorchModel | OnnxModel, device: str = "cpu", threads: int | None = None,
                 profile_dir=None):
        if not is_causal(model):
            raise CompressError(f"'{model.source}' is a {model.task} model, not a causal language model",
                                "pass a causal LM (e.g. smollm2, tiny:llama or an exported text-generation folder)")
        self.model = model
        self.device = device
        self.is_onnx = isinstance(model, OnnxModel)
        self.context = context_length(model)  # read once (an ONNX folder's config.json)
        if self.is_onnx:
            from compress.runtime.ort import make_session

            self.session = make_session(model.path, device=device, threads=threads, profile_dir=profile_dir)
            names = [i.name for i in self.session.get_inputs()]
            self.past_names = [n for n in names if n.startswith("past_key_values.")]
            self.has_position_ids = "position_ids" in names
            self.output_names = [o.name for o in self.session.get_outputs()]
            shape = {i.name: i.shape for i in self.session.get_inputs()}
            if self.past_names:
                kv_heads, head_dim = shape[self.past_names[0]][1], shape[self.past_names[0]][3]
                self.kv_shape = (int(kv_heads), int(head_dim))
            dtype = {i.name: i.type for i in self.session.get_inputs()}
            self.past_dtype = np.float16 if self.past_names and "float16" in dtype[self.past_names[0]] else np.float32
        else:
            model.module.to(device).eval()

    # --- the three primitives -------------------------------------------------------------------------------

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, past=None):
        """Logits (B, T, V) float32 numpy for new tokens `input_ids` (B, T) after `past`; returns (logits, past).

        `attention_mask` covers past + new tokens (ones when None: no padding)."""
        logits, past = self._forward(input_ids, attention_mask, past)
        return (logits if isinstance(logits, np.ndarray) else logits.float().cpu().numpy()), past

    def next_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, past=None):
        """Greedy next token (B,) int64 after `input_ids`, and the updated cache: the decode-loop step.

        Only the last position's logits are reduced, on the backend's own device (no (B, T, V) copy for torch)."""
        logits, past = self._forward(input_ids, attention_mask, past)
        if isinstance(logits, np.ndarray):
            return logits[:, -1].argmax(-1).astype(np.int64), past
        return logits[:, -1].argmax(-1).cpu().numpy().astype(np.int64), past

    def greedy(self, prompt_ids: np.ndarray, max_new_tokens: int, prompt_mask: np.ndarray | None = None) -> np.ndarray:
        """Greedy continuation (B, max_new_tokens) of left-padded prompts; never stops early (fixed length, so
        two models' generations compare position by position)."""
        self.check_length(prompt_ids.shape[1] + max_new_tokens)
        mask = np.ones_like(prompt_ids) if prompt_mask is None else prompt_mask.astype(np.int64)
        width = prompt_ids.shape[1]
        full = np.ones((mask.shape[0], width + max_new_tokens), np.int64)  # grows by slicing, never re-allocated
        full[:, :width] = mask
        token, past = self.next_tokens(prompt_ids, full[:, :width], None)
        out = [token]
        for step in range(1, max_new_tokens):
            token, past = self.next_tokens(token[:, None], full[:, :width + step], past)
            out.append(token)
        return np.stack(out, 1)

    def check_length(self, total: int) -> None:
        limit = self.context
        if limit is not None and total > limit:
            raise CompressError(f"a sequence of {total} tokens is longer than the model's context of {limit}",
                                "use shorter prompts / blocks or fewer new tokens")

    # --- backends ---------------------------------------------------------------------------------------------

    def _forward(self, input_ids, attention_mask, past):
        if attention_mask is None:
            past_len = 0 if past is None else self._past_len(past)
            attention_mask = np.ones((input_ids.shape[0], past_len + input_ids.shape[1]), np.int64)
        # Positions count real tokens only, so left padding does not shift them (what HF generate does).
        positions = np.clip(np.cumsum(attention_mask, 1) - 1, 0, None)[:, -input_ids.shape[1]:]
        if self.is_onnx:
            return self._ort(input_ids, attention_mask, positions, past)
        return self._torch(input_ids, attention_mask, positions, past)

    def _past_len(self, past) -> int:
        if self.is_onnx:
            shape = past[0].shape() if callable(getattr(past[0], "shape", None)) else past[0].shape
            return shape[2]
        return past.get_seq_length()

    def _torch(self, input_ids, attention_mask, positions, past):
        import torch

        dev = self.device
        with torch.inference_mode():
            out = self.model.module(
                input_ids=torch.from_numpy(np.ascontiguousarray(input_ids)).to(dev),
                attention_mask=torch.from_numpy(np.ascontiguousarray(attention_mask)).to(dev),
                position_ids=torch.from_numpy(np.ascontiguousarray(positions)).to(dev),
                past_key_values=past, use_cache=True)
        return out.logits, out.past_key_values

    def prefill_feed(self, batch_size: int, length: int) -> dict:
        """An ONNX feed for a prompt of `length` tokens with an empty cache (for profiling node placement)."""
        ids = np.full((batch_size, length), 1, np.int64)
        mask = np.ones_like(ids)
        return self._ort_feed(ids, mask, np.cumsum(mask, 1) - 1, None)

    def _ort_feed(self, input_ids, attention_mask, positions, past) -> dict:
        feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        if self.has_position_ids:
            feed["position_ids"] = positions.astype(np.int64)
        if past is None:
            empty = np.zeros((input_ids.shape[0], self.kv_shape[0], 0, self.kv_shape[1]), self.past_dtype)
            past = [empty] * len(self.past_names)
        feed.update(zip(self.past_names, past, strict=True))
        return feed

    def _ort(self, input_ids, attention_mask, positions, past):
        """I/O binding: the cache stays in ONNX Runtime's buffers between steps (OrtValues on the model's device);
        only the logits come back to the host."""
        import onnxruntime as ort

        device = "cuda" if self.device == "cuda" else "cpu"
        binding = self.session.io_binding()
        host = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.has_position_ids:
            host["position_ids"] = positions
        for name, value in host.items():
            value = np.ascontiguousarray(value, dtype=np.int64)
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, device, 0))
        if past is None:
            empty = np.zeros((input_ids.shape[0], self.kv_shape[0], 0, self.kv_shape[1]), self.past_dtype)
            past = [ort.OrtValue.ortvalue_from_numpy(empty, device, 0)] * len(self.past_names)
        for name, value in zip(self.past_names, past, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self.output_names[0], "cpu")
        for name in self.output_names[1:]:
            binding.bind_output(name, device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), outputs[1:]


def left_pad(sequences: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded ids and mask (B, T) for prompts of different lengths (decoders continue from the right)."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, np.int64)
    mask = np.zeros((len(sequences), width), np.int64)
    for i, s in enumerate(sequences):
        ids[i, width - len(s):] = s
        mask[i, width - len(s):] = 1
    return ids, mask


def generate_greedy(run: CausalRunner, prompts: list[list[int]], max_new_tokens: int) -> np.ndarray:
    """(P, max_new_tokens) greedy tokens, one prompt at a time (batch 1: no padding can change the result)."""
    return np.concatenate([run.greedy(np.asarray([p], np.int64), max_new_tokens) for p in prompts])

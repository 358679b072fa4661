"""Where one decode step of an ONNX decoder spends its time: ONNX Runtime's own profiler over a prefill and a run of
greedy decode steps, summed per operator type (MatMulNBits, GroupQueryAttention, ...) and per step.

The figures come from ORT's profiler (`SessionOptions.enable_profiling`: one "kernel_time" event per node run), so
they cover the graph only; the gap between their sum and the wall time of a step is what runs outside the kernels
(session.run overhead, the runner's Python, copies). Profiling adds a little to every node, so read shares, not
absolute speeds.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from compress.models.artifacts import OnnxModel
from compress.runtime.causal import CausalRunner


def decode_profile(model: OnnxModel, *, prompt_len: int = 128, steps: int = 32, threads: int = 2) -> dict:
    """Per-operator time of one decode step (mean over `steps` after a `prompt_len`-token prefill) and of the prefill.

    Returns: {"steps", "prompt_len", "threads", "decode_wall_ms" (per step, profiled), "decode_kernel_ms",
              "decode_ops": [{"op", "ms", "share", "nodes"}] (largest first), "prefill_kernel_ms", "prefill_ops"}.
    """
    with tempfile.TemporaryDirectory() as tmp:
        runner = CausalRunner(model, threads=threads, profile_dir=tmp)
        vocab = len(model.tokenizer) if model.tokenizer is not None else 1000
        ids = np.random.default_rng(0).integers(min(100, vocab // 2), vocab, (1, prompt_len)).astype(np.int64)
        mask = np.ones((1, prompt_len + steps + 1), np.int64)
        token, past = runner.next_tokens(ids, mask[:, :prompt_len])
        started = time.perf_counter()
        for step in range(1, steps + 1):
            token, past = runner.next_tokens(token[:, None], mask[:, :prompt_len + step], past)
        wall = (time.perf_counter() - started) * 1000 / steps
        profile = runner.session.end_profiling()
        try:
            events = json.loads(Path(profile).read_text())
        finally:
            os.remove(profile)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    if not runs:
        return {"error": "the profiler recorded no model_run events"}
    prefill_end = runs[0]["ts"] + runs[0]["dur"]  # the first run is the prefill
    prefill = [k for k in kernels if k["ts"] < prefill_end]
    decode = [k for k in kernels if k["ts"] >= prefill_end]
    return {"steps": steps, "prompt_len": prompt_len, "threads": threads, "decode_wall_ms": round(wall, 3),
            "decode_kernel_ms": round(sum(k["dur"] for k in decode) / 1000 / steps, 3),
            "decode_ops": _by_op(decode, steps), "prefill_kernel_ms": round(sum(k["dur"] for k in prefill) / 1000, 3),
            "prefill_ops": _by_op(prefill, 1)}


def _by_op(kernels: list[dict], runs: int) -> list[dict]:
    total = sum(k["dur"] for k in kernels) or 1
    ms: dict[str, float] = defaultdict(float)
    nodes: dict[str, set] = defaultdict(set)
    for k in kernels:
        op = k.get("args", {}).get("op_name", "?")
        ms[op] += k["dur"]
        nodes[op].add(k["name"])
    rows = [{"op": op, "ms": round(d / 1000 / runs, 3), "share": round(d / total, 4), "nodes": len(nodes[op])}
            for op, d in ms.items()]
    return sorted(rows, key=lambda r: -r["ms"])

"""The one place ONNX Runtime sessions are made: providers, threads, graph optimization, node placement."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from compress.core.errors import CompressError

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


def cuda_available() -> bool:
    """True only when torch sees a CUDA device: onnxruntime-gpu lists CUDA even without a GPU (toolchain.md §7)."""
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def providers_for(device: str) -> list[str]:
    """Execution providers to request for `device` ("cpu" or "cuda"), CPU always last as the fallback."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise CompressError("this onnxruntime has no CUDA provider", "pip install 'compress[gpu]' (onnxruntime-gpu)")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def make_session(path: str | Path, *, device: str = "cpu", threads: int | None = None,
                 optimization: str = "all", profile_dir: str | Path | None = None,
                 save_optimized: str | Path | None = None, save_format: str = "onnx"):
    """Create an `InferenceSession` with fixed threads.

    Args:
        path: .onnx or .ort model file.
        device: "cpu" or "cuda".
        threads: intra-op threads (None = ONNX Runtime default). Inter-op is 1: BERT graphs are sequential.
        optimization: graph optimization level: disable, basic, extended or all.
        profile_dir: when set, enable profiling (used to count nodes per execution provider).
        save_optimized: write the optimized graph here (offline optimization).
        save_format: "onnx" or "ort" for `save_optimized`.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[optimization])
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(profile_dir) / "ort_profile")
    if save_optimized is not None:
        so.optimized_model_filepath = str(save_optimized)
        if save_format == "ort":
            so.add_session_config_entry("session.save_model_format", "ORT")
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers_for(device))
    except Exception as e:  # InvalidGraph, InvalidProtobuf, NoSuchFile...
        raise CompressError(f"ONNX Runtime cannot load '{path}': {str(e).splitlines()[0][:200]}",
                            "pass a valid ONNX model") from e


def nodes_per_provider(session, feed: dict) -> dict[str, int]:
    """Run once with profiling on and count graph nodes by the execution provider that ran them.

    A CUDA session that silently falls back to CPU for some nodes shows up here (ORT issues #9115, #10267).
    """
    session.run(None, feed)
    profile = session.end_profiling()
    try:
        events = json.loads(Path(profile).read_text())
    finally:
        os.remove(profile)
    counts: Counter = Counter()
    seen = set()
    for ev in events:
        args = ev.get("args", {})
        if ev.get("cat") == "Node" and "provider" in args and ev["name"] not in seen:
            seen.add(ev["name"])
            counts[args["provider"]] += 1
    return dict(counts)

"""The machine a measurement ran on: CPU model and flags, cores, threads, library versions, wait policy."""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def environment(threads: int) -> dict:
    """CPU model and the flags that decide int8 speed, threads, GPU, and library versions."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]
    versions = {}
    for pkg in ("compress", "torch", "onnxruntime", "onnxruntime-gpu", "onnx", "transformers", "optimum", "optimum-onnx"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    env = {"cpu": cpu, "cpu_flags": [f for f in wanted if f in flags], "physical_cores": physical_cores(),
           "logical_cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
           "platform": platform.platform(), "versions": versions}
    import torch

    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def policy_record(info: dict, policy: str) -> str:
    """The wait policy a measurement ran under, as its worker reported it (one line for the results)."""
    omp = info.get("omp_wait_policy") or "unset"
    text = f"{policy}: OMP_WAIT_POLICY={omp}"
    if info.get("backend") == "onnxruntime":
        text += ", ORT intra-op spinning default (on)"
    if not info.get("isolated", False):
        text += " (in-process: the parent's policy)"
    return text

"""The machine a measurement ran on: CPU model and flags, cores, threads, kernel, library versions, wait policy."""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


# Flags that decide int8/bf16 speed; every avx512* and amx* flag the CPU has is kept too.
WANTED_FLAGS = ("avx2", "fma", "avx_vnni", "avx_vnni_int8", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                "amx_int8", "amx_bf16")


def cpu_info() -> tuple[str, list[str]]:
    """CPU model name and its speed-relevant flags (from /proc/cpuinfo; the platform's name elsewhere)."""
    import platform

    cpu, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    extra = sorted(f for f in flags if f.startswith(("avx512", "amx")) and f not in WANTED_FLAGS)
    return cpu, [f for f in WANTED_FLAGS if f in flags] + extra


def environment(threads: int, *, wait_policies: dict[str, str] | None = None, load_before: float | None = None,
                load_after: float | None = None) -> dict:
    """CPU model and the flags that decide int8 speed, cores, threads, kernel, GPU, library versions, and (from a
    bench) the wait policy of each backend and the 1-minute load average before and after it.

    Args:
        threads: the intra-op threads of the measurement.
        wait_policies: backend -> `policy_record` of its workers.
        load_before: load average when the bench started; load_after: when it ended.
    """
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu, flags = cpu_info()
    versions = {}
    for pkg in ("compress", "torch", "onnxruntime", "onnxruntime-gpu", "onnx", "transformers", "optimum", "optimum-onnx"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    env = {"cpu": cpu, "cpu_flags": flags, "physical_cores": physical_cores(),
           "logical_cores": os.cpu_count(), "threads": threads, "kernel": platform.release(),
           "python": platform.python_version(), "platform": platform.platform(), "versions": versions}
    if wait_policies is not None:
        env["wait_policy"] = dict(wait_policies)
    if load_before is not None or load_after is not None:
        env.update(load_before=load_before, load_after=load_after)
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

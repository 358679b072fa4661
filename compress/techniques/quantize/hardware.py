"""What the hardware decides: the CPU's int8 flags, the int8 types they imply, and where ORT runs each node."""

from __future__ import annotations

import tempfile
from pathlib import Path

from compress.techniques.quantize.config import QuantizeSettings

# Measured (shared/notes/toolchain.md §4, §9-10): S8 weights with U8 activations are the fast, accurate pair on
# x86; without VNNI, 7-bit weights (reduce_range) avoid int16 saturation in the AVX2 U8S8 kernels. The CUDA
# execution provider has no kernels for the int8 ops and silently runs them on CPU (onnxruntime issues #9115,
# #10267): count nodes per provider before claiming a GPU result.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_int8_profile() -> dict:
    """CPU model and the instruction-set flags that decide int8 kernels: VNNI (avx512_vnni/avx_vnni/amx_int8)."""
    import platform

    cpu, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    wanted = ("avx2", "avx512f", "avx512bw") + VNNI_FLAGS
    return {"cpu": cpu, "flags": [f for f in wanted if f in flags], "vnni": any(f in flags for f in VNNI_FLAGS),
            "machine": platform.machine()}


def resolve_int8_types(cfg: QuantizeSettings, cpu: dict) -> dict:
    """Weight/activation types and reduce_range from the config, 'auto' decided from the CPU flags (with reasons)."""
    weight = cfg.weight_type
    if weight == "auto":
        weight = "qint8"
        weight_reason = "auto: S8 weights (U8 weights are slower and less accurate on x86, toolchain.md §4)"
    else:
        weight_reason = "set by the user"
    if cfg.reduce_range is None:
        reduce = not cpu["vnni"]
        reduce_reason = ("auto: no VNNI on this CPU, so 7-bit weights avoid int16 saturation in the AVX2 U8S8 "
                         "kernels" if reduce else "auto: VNNI present, full 8-bit weights")
    else:
        reduce, reduce_reason = cfg.reduce_range, "set by the user"
    return {"weight_type": weight, "activation_type": "quint8", "reduce_range": reduce,
            "reasons": {"weight_type": weight_reason, "reduce_range": reduce_reason,
                        "activation_type": "U8 activations: S8S8 is ~1.5x slower than fp32 without VNNI (§4)"}}


def provider_check(path: Path, mode: str, device: str, feed_batch: dict | None) -> tuple[dict, list[str]]:
    """Nodes per execution provider for the written model, and warnings with the GPU-appropriate alternative.

    On CUDA the int8 ops (MatMulInteger, DynamicQuantizeLinear, QLinearMatMul...) have no kernels and silently run
    on CPU (onnxruntime #9115, #10267): measured with profiling when a GPU is present, stated otherwise.
    """
    import onnxruntime as ort

    from compress.runtime.ort import cuda_available, make_session, nodes_per_provider

    report: dict = {"target_device": device, "available_providers": ort.get_available_providers()}
    warnings: list[str] = []
    trt = "TensorrtExecutionProvider" in report["available_providers"]
    alternative = ("use --mode fp16 for the CUDA provider" +
                   (", or --mode static (QDQ) for the TensorRT provider, which is installed" if trt else
                    "; QDQ (--mode static) suits the TensorRT provider when onnxruntime-gpu with TensorRT is installed"))
    measure_on = "cuda" if device == "cuda" and cuda_available() else "cpu"
    if feed_batch is not None:
        with tempfile.TemporaryDirectory() as prof:
            session = make_session(path, device=measure_on, profile_dir=prof)
            feed = {i.name: feed_batch[i.name].cpu().numpy() for i in session.get_inputs()}
            report["nodes_per_provider"] = nodes_per_provider(session, feed)
        report["measured_on"] = measure_on
    if device == "cuda" and mode in ("dynamic", "static"):
        placed = report.get("nodes_per_provider", {})
        if measure_on == "cuda" and placed.get("CPUExecutionProvider", 0):
            warnings.append(f"on CUDA, {placed['CPUExecutionProvider']} of {sum(placed.values())} nodes of this int8 "
                            f"model run on CPU (no int8 CUDA kernels): {alternative}")
        elif measure_on == "cpu":
            warnings.append("no CUDA device here to count nodes per provider; the CUDA provider has no kernels for "
                            f"these int8 ops and falls back to CPU (onnxruntime #9115, #10267): {alternative}")
    if device == "cpu" and mode == "fp16":
        warnings.append("fp16 targets GPUs: on CPU, ONNX Runtime casts around most fp16 ops and is slower than fp32; "
                        "use --mode dynamic for CPU")
    return report, warnings

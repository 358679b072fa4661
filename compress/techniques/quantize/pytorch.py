"""PyTorch dynamic int8: swap a model's nn.Linear layers for int8 ones, for users who stay in PyTorch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from compress.core.config import StrictConfig
from compress.core.errors import CompressError
from compress.evaluation.size import model_size
from compress.models.artifacts import TorchModel, publish_dir
from compress.models.modules import check_globs, matches, swap_module
from compress.models.surgery import int8_linear_class

# Why this backend (toolchain.md §6, measured on our AVX2 CPU): torchao's `Int8DynamicActivationInt8WeightConfig`
# runs ~15x slower than fp32 in eager mode (no CPU kernel without torch.compile), while PyTorch's own quantized
# kernels (`torch.ops.quantized.linear_dynamic`, fbgemm/x86: the ones behind the deprecated
# `torch.ao.quantization.quantize_dynamic`) give ~1.5x over fp32. We call those kernels from a small module whose
# int8 weights and per-channel scales are plain tensors, so the model saves as safetensors and reloads without
# pickle (the swap is recorded as surgery). torchao stays an optional extra (`compress[torchao]`), unused here.


class QuantizeTorchSettings(StrictConfig):
    """Dynamic int8 for nn.Linear: per-channel symmetric int8 weights, activations quantized per call."""

    targets: list[str] = Field(["*"], description="Globs over module names of the Linear layers to quantize.")
    exclude: list[str] = Field([], description="Globs of Linear layers kept fp32 (each must match).")


def select_linears(module, targets: list[str], exclude: list[str]) -> list[str]:
    """Names of nn.Linear modules matching `targets` and no `exclude` glob; CompressError for an unused exclude."""
    from torch import nn

    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    check_globs(linears, exclude, what="Linear layer")
    return [n for n in linears if matches(n, targets) and not matches(n, exclude)]


def quantize_linears(model: TorchModel, cfg: QuantizeTorchSettings) -> dict:
    """Swap the selected Linear layers of `model` (in place) for int8 dynamic ones; returns counts and sizes."""
    before = model_size(model)["size_mb"]
    names = select_linears(model.module, cfg.targets, cfg.exclude)
    if not names:
        raise CompressError("no Linear layer to quantize", "check targets / exclude")
    cls = int8_linear_class()
    for name in names:
        swap_module(model.module, name, cls.from_linear(model.module.get_submodule(name)))
    model.surgery.append({"op": "int8_dynamic_linear", "params": {"modules": names}})
    after = model_size(model)["size_mb"]
    return {"backend": "torch.ops.quantized (fbgemm/x86)", "quantized_linears": len(names),
            "size_fp32_mb": round(before, 3), "size_mb": round(after, 3), "size_ratio": round(after / before, 4)}


@dataclass
class TorchQuantizeResult:
    model: object
    metrics: dict = field(default_factory=dict)


def quantize_torch_model(model, out_dir: str | Path, cfg: QuantizeTorchSettings) -> TorchQuantizeResult:
    """CLI entry: quantize a TorchModel and save it (safetensors + surgery manifest) into `out_dir`."""
    import tempfile

    if not isinstance(model, TorchModel):
        raise CompressError("--torch needs a PyTorch model", "pass an HF folder or .pt, or drop --torch for ONNX")
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = quantize_linears(model, cfg)
        staging = Path(tmp) / "out"
        model.save(staging)
        publish_dir(staging, out_dir)
    return TorchQuantizeResult(model, metrics)

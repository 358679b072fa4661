"""Pass `quantize_torch`: TorchModel -> TorchModel with int8 dynamic Linear layers, for users who stay in PyTorch.

Why this backend (toolchain.md §6, measured on our AVX2 CPU): torchao's `Int8DynamicActivationInt8WeightConfig`
runs ~15x slower than fp32 in eager mode (no CPU kernel without torch.compile), while PyTorch's own quantized
kernels (`torch.ops.quantized.linear_dynamic`, fbgemm/x86: the ones behind the deprecated
`torch.ao.quantization.quantize_dynamic`) give ~1.5x over fp32. We call those kernels from a small module whose
int8 weights and per-channel scales are plain tensors, so the model saves as safetensors and reloads without
pickle (the swap is recorded as surgery). torchao stays an optional extra (`compress[torchao]`), unused here.
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.errors import CompressError
from compress.models import register_surgery
from compress.passes.base import PassConfig, PassContext, PassResult, register_pass


class QuantizeTorchConfig(PassConfig):
    """Dynamic int8 for nn.Linear: per-channel symmetric int8 weights, activations quantized per call."""

    type: Literal["quantize_torch"] = "quantize_torch"
    targets: list[str] = Field(["*"], description="Globs over module names of the Linear layers to quantize.")
    exclude: list[str] = Field([], description="Globs of Linear layers kept fp32 (each must match).")


def _int8_linear_class():
    import torch
    from torch import nn

    class Int8DynamicLinear(nn.Module):
        """y = x W^T + b with W stored as int8 (out, in) and a per-output-channel scale; fbgemm/x86 kernels."""

        def __init__(self, in_features: int, out_features: int, bias: bool = True):
            super().__init__()
            self.in_features, self.out_features = in_features, out_features
            self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("weight_scale", torch.ones(out_features))
            self.register_buffer("bias", torch.zeros(out_features) if bias else None)
            self._packed = None

        @classmethod
        def from_linear(cls, linear: nn.Linear):
            new = cls(linear.in_features, linear.out_features, linear.bias is not None)
            w = linear.weight.detach().float()
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # symmetric, per output channel
            new.weight_int8.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            new.weight_scale.copy_(scale)
            if linear.bias is not None:
                new.bias.copy_(linear.bias.detach().float())
            return new

        def _load_from_state_dict(self, *args, **kwargs):
            self._packed = None  # new weights: repack on the next call
            super()._load_from_state_dict(*args, **kwargs)

        def forward(self, x):
            if self._packed is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # quantized tensor dtypes are deprecated (pytorch #184982)
                    zero = torch.zeros(self.out_features, dtype=torch.long)
                    qweight = torch._make_per_channel_quantized_tensor(self.weight_int8, self.weight_scale.double(),
                                                                      zero, 0)
                    self._packed = torch.ops.quantized.linear_prepack(qweight, self.bias)
            # reduce_range=True: 7-bit activations, so the AVX2 u8 x s8 products cannot saturate int16 (no VNNI).
            return torch.ops.quantized.linear_dynamic(x.float(), self._packed, True).to(x.dtype)

    return Int8DynamicLinear


@register_surgery("int8_dynamic_linear")
def _swap_in_empty(module, modules: list[str]) -> None:
    """Re-create the int8 modules (empty) in a freshly built model, before its weights are loaded."""
    cls = _int8_linear_class()
    for name in modules:
        linear = module.get_submodule(name)
        _set(module, name, cls(linear.in_features, linear.out_features, linear.bias is not None))


def _set(root, name: str, new) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def select_linears(module, targets: list[str], exclude: list[str]) -> list[str]:
    """Names of nn.Linear modules matching `targets` and no `exclude` glob; CompressError for an unused exclude."""
    from torch import nn

    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in linears):
            raise CompressError(f"--exclude '{pattern}' matches no Linear layer",
                                f"use module names or globs (layers look like: {', '.join(linears[:2])})")
    return [n for n in linears if any(fnmatch.fnmatchcase(n, t) for t in targets)
            and not any(fnmatch.fnmatchcase(n, e) for e in exclude)]


@register_pass(QuantizeTorchConfig, accepts="torch", returns="torch")
def quantize_torch(model, cfg: QuantizeTorchConfig, ctx: PassContext) -> PassResult:
    """Swap the selected Linear layers of `model` (in place) for int8 dynamic ones; metrics: counts and sizes."""
    from compress.evaluation.size import model_size

    before = model_size(model)["size_mb"]
    names = select_linears(model.module, cfg.targets, cfg.exclude)
    if not names:
        raise CompressError("no Linear layer to quantize", "check targets / exclude")
    cls = _int8_linear_class()
    for name in names:
        _set(model.module, name, cls.from_linear(model.module.get_submodule(name)))
    model.surgery.append({"op": "int8_dynamic_linear", "params": {"modules": names}})
    after = model_size(model)["size_mb"]
    return PassResult(model, {"backend": "torch.ops.quantized (fbgemm/x86)", "quantized_linears": len(names),
                              "size_fp32_mb": round(before, 3), "size_mb": round(after, 3),
                              "size_ratio": round(after / before, 4)})


@dataclass
class TorchQuantizeResult:
    model: object
    metrics: dict = field(default_factory=dict)


def quantize_torch_model(model, out_dir: str | Path, cfg: QuantizeTorchConfig) -> TorchQuantizeResult:
    """CLI entry: quantize a TorchModel and save it (safetensors + surgery manifest) into `out_dir`."""
    import tempfile

    from compress.artifacts import TorchModel, publish_dir
    from compress.passes.base import DataBundle

    if not isinstance(model, TorchModel):
        raise CompressError("--torch needs a PyTorch model", "pass an HF folder or .pt, or drop --torch for ONNX")
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        result = quantize_torch(model, cfg, PassContext(None, DataBundle(), Path(tmp)))
        staging = Path(tmp) / "out"
        result.model.save(staging)
        publish_dir(staging, out_dir)
    return TorchQuantizeResult(result.model, result.metrics)

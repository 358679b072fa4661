"""Pass `quantize_torch`: TorchModel -> TorchModel with int8 dynamic Linear layers, for users who stay in PyTorch.
The technique (the int8 Linear swap and why this backend) is `compress.techniques.quantize.pytorch`."""

from __future__ import annotations

from typing import Literal

from compress.passes.base import PassContext, PassResult, register_pass
from compress.techniques.quantize.pytorch import QuantizeTorchSettings, quantize_linears


class QuantizeTorchConfig(QuantizeTorchSettings):
    """Dynamic int8 for nn.Linear: per-channel symmetric int8 weights, activations quantized per call."""

    type: Literal["quantize_torch"] = "quantize_torch"


@register_pass(QuantizeTorchConfig, accepts="torch", returns="torch")
def quantize_torch(model, cfg: QuantizeTorchConfig, ctx: PassContext) -> PassResult:
    """Swap the selected Linear layers of `model` (in place) for int8 dynamic ones; metrics: counts and sizes."""
    return PassResult(model, quantize_linears(model, cfg))

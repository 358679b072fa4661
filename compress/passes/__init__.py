"""Passes: one file each (config + function + registration). Importing this package registers them all."""

from compress.passes import export_onnx  # noqa: F401
from compress.passes import factorize, prune_magnitude, prune_structured  # noqa: F401
from compress.passes import quantize, quantize_torch  # noqa: F401
from compress.passes import distill, finetune  # noqa: F401
from compress.passes.base import PASSES, PassConfig, PassContext, PassResult, get_pass, list_passes, register_pass

__all__ = ["PASSES", "PassConfig", "PassContext", "PassResult", "get_pass", "list_passes", "register_pass"]

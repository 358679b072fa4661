"""Passes: one file each (config + function + registration). Importing this package registers them all."""

from compress.passes import (  # noqa: F401  (each import registers its pass)
    distill,
    export_onnx,
    factorize,
    finetune,
    prune_magnitude,
    prune_structured,
    quantize,
    quantize_torch,
)
from compress.passes.base import (
    PASSES,
    PassConfig,
    PassContext,
    PassResult,
    get_pass,
    list_passes,
    register_pass,
)

__all__ = ["PASSES", "PassConfig", "PassContext", "PassResult", "get_pass", "list_passes", "register_pass"]

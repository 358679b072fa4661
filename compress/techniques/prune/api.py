"""The structured-pruning entry point: the one place where classifiers and causal LMs part ways.

Classifiers lose units scored by weight norm (`structured.prune_units`); causal LMs lose layers, FFN neurons or GQA
groups scored on calibration text (`causal.prune_decoder_units`). Pruning never trains: recovery is a separate
technique (`compress.techniques.distill.recover`), combined with pruning by the passes.
"""

from __future__ import annotations

from compress.models.artifacts import TorchModel, copy_model
from compress.models.causal import is_causal
from compress.techniques.prune.causal import prune_decoder_units
from compress.techniques.prune.structured import PruneStructuredSettings, prune_units


def prune_structured(model: TorchModel, cfg: PruneStructuredSettings, *, calibration=None) -> tuple[TorchModel, dict]:
    """A pruned copy of `model` (the input is never modified) and what was removed.

    Args:
        model: a classifier or a causal LM.
        cfg: unit kind, amount (sparsity, or depth for decoder layers), importance and rounding.
        calibration: examples whose texts score decoder units (causal LMs only).
    """
    pruned = copy_model(model)
    if is_causal(model):
        return pruned, prune_decoder_units(pruned, cfg, calibration)
    return pruned, prune_units(pruned, cfg)

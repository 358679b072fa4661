"""What a quantization run returns, and the quantization.json it leaves beside the model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from compress.core.errors import CompressError
from compress.models.artifacts import OnnxModel

SETTINGS_FILE = "quantization.json"
SETTINGS_FORMAT = 1


@dataclass
class QuantizeResult:
    """What `quantize` wrote and measured.

    Args:
        model: the written model (int8 or fp16 ONNX) in the output folder.
        settings: the JSON saved beside it (config, resolved settings, exclusions, metrics).
        metrics: flat-ish facts for pass records and reports (see `quantize`).
        warnings: one-line warnings for the user (execution provider fallback, budget not met...).
    """

    model: OnnxModel
    settings: dict
    metrics: dict
    warnings: list[str] = field(default_factory=list)


def load_settings(folder: str | Path) -> dict:
    """The settings saved beside a quantized model (`quantization.json`)."""
    path = Path(folder)
    path = path / SETTINGS_FILE if path.is_dir() else path.with_name(SETTINGS_FILE)
    if not path.exists():
        raise CompressError(f"no {SETTINGS_FILE} at '{path.parent}'", "pass a folder written by compress quantize")
    settings = json.loads(path.read_text())
    if settings.get("format") != SETTINGS_FORMAT:
        raise CompressError(f"{path} has settings format {settings.get('format')}", "upgrade compress")
    return settings

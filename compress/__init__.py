"""compress: a model compression toolkit (distill, prune, factorize, quantize, export) with proof it still works."""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy public API: `import compress` stays light; heavy modules load on first use.
    api = {
        "load_model": "compress.models.load", "load_examples": "compress.data.examples",
        "DataSpec": "compress.data.examples",
        "export_onnx": "compress.export.onnx", "evaluate": "compress.evaluation.accuracy",
        "bench": "compress.evaluation.latency.bench", "BenchSpec": "compress.evaluation.latency.bench",
        "list_passes": "compress.passes.base", "get_pass": "compress.passes.base",
        "CompressError": "compress.core.errors", "load_recipe": "compress.pipeline.recipe",
        "run_recipe": "compress.pipeline.runner",
    }
    if name in api:
        import importlib

        return getattr(importlib.import_module(api[name]), name)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")

"""Command-line interface: a thin typer layer over the library. Each command lives in its own module."""

from __future__ import annotations

import importlib

from compress.cli.app import app

# One module per command group; each registers its commands on `app` when imported.
COMMAND_MODULES = ["export", "evaluate", "bench", "train", "prune", "run", "quantize", "search", "generate"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"compress.cli.{_name}")


def main() -> None:
    app()

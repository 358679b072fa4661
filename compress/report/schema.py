"""The shape of `results.json` (schema 1): plain data written by `pipeline.run`, read back by `compress report`.

Only the names below are promised; writers may add fields freely (`extra="allow"`)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compress.core.errors import CompressError

SCHEMA_VERSION = 1


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class LatencyRow(_Open):
    """One timed shape of one stage."""

    device: str = Field(description="cpu or cuda.")
    backend: str = Field(description="pytorch or onnxruntime.")
    batch_size: int = Field(description="Batch size.")
    seq_len: int = Field(description="Sequence length (text models).")
    p50_ms: float = Field(description="Median latency in ms.")
    p90_ms: float = Field(description="90th percentile latency in ms.")


class StageResult(_Open):
    """One stage as measured: accuracy, agreement, size and latency (teacher first)."""

    name: str = Field(description="Stage name.")
    accuracy: float | None = Field(None, description="Accuracy on the eval split.")
    size_mb: float = Field(description="Size on disk in MB.")
    params: int = Field(description="Parameter count.")
    latency: list[LatencyRow] = Field([], description="Latency per device x backend x shape.")


class Results(_Open):
    """A whole run."""

    schema_: int = Field(alias="schema", description="Schema version of this file.")
    recipe: str = Field(description="Recipe name.")
    environment: dict = Field(description="CPU, threads, library versions.")
    stages: list[StageResult] = Field(min_length=1, description="Stages, teacher first.")


def load_results(path: str | Path) -> dict:
    """Read and check a `results.json` (or a report folder holding one); returns the plain data."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise CompressError(f"no results.json at '{path}'", "pass a report folder written by `compress run`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CompressError(f"'{path}' is not valid JSON (line {e.lineno})", "re-run `compress run`") from None
    if data.get("schema") != SCHEMA_VERSION:
        raise CompressError(f"'{path}' has schema {data.get('schema')!r}, this version reads {SCHEMA_VERSION}",
                            "re-run the recipe with this version of compress")
    try:
        Results.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise CompressError(f"'{path}': {'.'.join(map(str, err['loc']))}: {err['msg']}", "re-run `compress run`") from None
    return data

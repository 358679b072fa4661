"""The strict-config base shared by pass configs, the training loop's settings and recovery settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """Unknown keys fail loudly (a typo in a recipe is an error) and configs are immutable data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

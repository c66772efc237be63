"""The base of every spec model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Frozen, strict config: unknown keys are errors, resolved values go into a new object."""

    model_config = ConfigDict(frozen=True, extra="forbid")

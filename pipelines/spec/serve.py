"""Serving stage spec. PLACEHOLDER: the serving work replaces this file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.spec.base import StageBase


class ServeStage(StageBase):
    reference_fields = ("model",)
    kind: Literal["serve"]
    model: str = Field(description="The stage whose model to serve, or a Hugging Face model directory.")

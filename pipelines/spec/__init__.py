"""The pipeline spec: named stages in order, each a `kind` from a discriminated union.

Adding a stage kind: define a `StageBase` subclass with `kind: Literal["name"]` in a module here, add it to
`Stage` below and map the kind to its runner in `jobs/registry.py`.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Union

from pydantic import Field, field_validator

from pipelines.spec.base import Model, Scaling, StageBase
from pipelines.spec.data import DataStage
from pipelines.spec.serve import ServeStage
from pipelines.spec.train import PretrainStage, TokenizerStage

Stage = Annotated[
    Union[DataStage, TokenizerStage, PretrainStage, ServeStage],  # noqa: UP007 (pydantic reads this better)
    Field(discriminator="kind"),
]

NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class Pipeline(Model):
    """A whole pipeline: where artifacts go and the stages that produce them."""

    name: str = Field(
        pattern=NAME_RE,
        description="Pipeline name: lowercase letters, digits, '-' and '_'. Part of the run id and artifact paths.",
    )
    storage: str = Field(
        "./runs",
        description="Artifact root: a local directory (relative to where llmctl runs) or s3://bucket/prefix. "
        "Every stage writes to <storage>/<pipeline>/<stage>/<cache_key>/.",
    )
    description: str = Field("", description="Free text shown by `llmctl plan`.")
    stages: dict[str, Stage] = Field(
        min_length=1, description="Stages by name, run in file order; a stage reads earlier stages by name."
    )

    @field_validator("stages")
    @classmethod
    def _stage_names(cls, stages: dict) -> dict:
        for name in stages:
            if not re.match(NAME_RE, name):
                raise ValueError(
                    f"stage name '{name}' is not allowed; use lowercase letters, digits, '-' and '_' (e.g. 'pretrain')"
                )
        return stages


STAGE_CLASSES: tuple[type[StageBase], ...] = typing.get_args(typing.get_args(Stage)[0])
STAGE_KINDS: tuple[str, ...] = tuple(typing.get_args(c.model_fields["kind"].annotation)[0] for c in STAGE_CLASSES)

__all__ = ["Pipeline", "Stage", "StageBase", "Scaling", "Model", "STAGE_KINDS"]

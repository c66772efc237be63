"""The pipeline spec: named stages in order, each a `kind` from a discriminated union.

Adding a stage kind: a `StageBase` subclass in a module here (its `kind: Literal["name"]`, config and `runner`),
a runner module, and one line in `STAGE_CLASSES` below.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Union

from pydantic import Field, field_validator, model_validator

from pipelines.spec.base import Model, Scaling, StageBase
from pipelines.spec.data import DataStage
from pipelines.spec.distill import DistillStage
from pipelines.spec.eval import EvalStage
from pipelines.spec.post import DPOStage, RewardModelStage, SFTStage
from pipelines.spec.quantize import QuantizeStage
from pipelines.spec.rlhf import GRPOStage, PPOStage
from pipelines.spec.serve import ServeStage
from pipelines.spec.tracking import TrackingConfig, is_registered
from pipelines.spec.train import PretrainStage, TokenizerStage

STAGE_CLASSES: tuple[type[StageBase], ...] = (
    DataStage, TokenizerStage, PretrainStage, SFTStage, RewardModelStage, DPOStage, GRPOStage, PPOStage,
    ServeStage, EvalStage, DistillStage, QuantizeStage,
)  # fmt: skip
Stage = Annotated[Union[STAGE_CLASSES], Field(discriminator="kind")]  # noqa: UP007 (pydantic reads this better)

NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class CapacityConfig(Model):
    """Assumptions of the estimates `llmctl plan --cluster` prints (they change no stage)."""

    mfu: float = Field(
        0.40,
        gt=0,
        le=1,
        description="Model-FLOPs utilisation assumed to turn a stage's FLOPs into hours on the cluster's GPUs "
        "(well-tuned dense LLM training reaches 0.35-0.55 on A100/H100; small models and RLHF rollouts less).",
    )


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
    capacity: CapacityConfig = Field(default_factory=CapacityConfig, description="Planning assumptions.")
    tracking: TrackingConfig | None = Field(
        None, description="Experiment trackers (MLflow, W&B) every stage logs to; a stage's own `tracking` replaces it."
    )
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

    @model_validator(mode="after")
    def _model_sources(self) -> Pipeline:
        """A stage that starts from another stage's model (`model_kinds`) must name one that exports that kind; a
        LoRA adapter alone (an sft stage with lora.merge: false) goes only to a serve stage."""
        for name, stage in self.stages.items():
            kinds = getattr(stage, "model_kinds", None)
            ref = getattr(stage, "model", None)
            if kinds and ref in self.stages and self.stages[ref].kind not in kinds:
                raise ValueError(
                    f"stages.{name}.model: '{ref}' is a {self.stages[ref].kind} stage, which exports no causal "
                    f"language model; name a {', '.join(kinds[:-1])} or {kinds[-1]} stage, or a Hugging Face model "
                    f"directory"
                )
            for path, source in stage.references(set(self.stages)).items():
                if stage.kind != "serve" and adapter_only(self.stages.get(source)):
                    raise ValueError(
                        f"stages.{name}.{path}: '{source}' exports a LoRA adapter without its base (lora.merge: "
                        f"false), which only a serve stage takes. Set stages.{source}.lora.merge: true to give {name} "
                        "a whole model."
                    )
        return self

    @model_validator(mode="after")
    def _stage_rules(self) -> Pipeline:
        """Rules a stage checks against the other stages through its `check_pipeline(name, stages)`."""
        for name, stage in self.stages.items():
            if hasattr(stage, "check_pipeline"):
                stage.check_pipeline(name, self.stages)
        return self

    @model_validator(mode="after")
    def _registered_models(self) -> Pipeline:
        """A serve stage may take a version from the MLflow registry, which it reads from its tracking server."""
        for name, stage in self.stages.items():
            if is_registered(getattr(stage, "model", "")) and stage.kind != "serve":
                raise ValueError(f"stages.{name}.model: only a serve stage takes a registered model ({stage.model})")
            if is_registered(getattr(stage, "model", "")) and not (self.tracking_for(name) or TrackingConfig()).mlflow:
                raise ValueError(
                    f"stages.{name}.model: '{stage.model}' is a version in an MLflow model registry; set "
                    "tracking.mlflow.tracking_uri to the server that holds it."
                )
            if is_registered(getattr(stage, "model", "")) and not re.match(r"^models:/[^/]+/\d+$", stage.model):
                raise ValueError(
                    f"stages.{name}.model: '{stage.model}' is not a registered model version; write "
                    "models:/<name>/<version>, e.g. models:/tiny-sft/1"
                )
        return self

    def tracking_for(self, name: str) -> TrackingConfig | None:
        """The trackers stage `name` logs to (its own `tracking`, else the pipeline's); None when there are none."""
        config = self.stages[name].tracking or self.tracking
        return config if config is not None and config.enabled else None


def adapter_only(stage: Any) -> bool:
    """Whether a stage's model/ is a LoRA adapter alone (an sft stage with lora.merge: false)."""
    lora = getattr(stage, "lora", None)
    return lora is not None and not lora.merge


STAGE_KINDS: tuple[str, ...] = tuple(typing.get_args(c.model_fields["kind"].annotation)[0] for c in STAGE_CLASSES)

__all__ = ["Pipeline", "Stage", "StageBase", "Scaling", "Model", "STAGE_KINDS"]

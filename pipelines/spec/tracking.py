"""Where a pipeline's runs are tracked: an MLflow server and/or Weights & Biases, beside the TensorBoard files.

Set once at the pipeline level (`tracking:`); a stage's own `tracking:` replaces it for that stage (`tracking:
{}` turns it off there). Tracking changes no stage's output, so it is left out of the stages' cache keys.
Credentials are never part of the spec: MLflow's and W&B's clients read them from the environment
(MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD, WANDB_API_KEY) of the shell that submits and of the
cluster's nodes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipelines.spec.model import Model

REGISTERED = "models:/"  # a model version in the MLflow registry: models:/<name>/<version>


def is_registered(ref: str) -> bool:
    return isinstance(ref, str) and ref.startswith(REGISTERED)


TOKEN_ENV = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "WANDB_API_KEY")


class MlflowConfig(Model):
    """An MLflow tracking server: one parent run per submission, one child run per stage."""

    tracking_uri: str = Field(
        description="The tracking server, e.g. http://127.0.0.1:5000 (`llmctl tracking up` starts one) or your "
        "team's server. Credentials come from MLFLOW_TRACKING_TOKEN (or _USERNAME/_PASSWORD) in the environment."
    )
    experiment: str = Field("", description="MLflow experiment; empty: the pipeline's name.")
    register_model: bool = Field(
        False,
        description="Register each model a stage exports as a new version of '<pipeline>-<stage>' in the model "
        "registry (the Hugging Face directory as the version's artifacts, linked to the stage's run).",
    )

    @field_validator("tracking_uri")
    @classmethod
    def _http(cls, uri: str) -> str:
        if not uri.startswith(("http://", "https://")):
            raise ValueError(
                f"'{uri}' is not a tracking server: give its http(s) address, e.g. http://127.0.0.1:5000 "
                "(`llmctl tracking up` starts one on this machine). File stores are not shared by a cluster's nodes."
            )
        return uri.rstrip("/")


class WandbConfig(Model):
    """Weights & Biases: one run per stage, grouped by the pipeline run."""

    project: str = Field(description="W&B project.")
    entity: str = Field("", description="W&B entity (team or user); empty: the API key's default.")
    mode: Literal["online", "offline"] = Field(
        "online",
        description="online: stream to W&B (WANDB_API_KEY on the nodes); offline: write run directories under "
        "`dir` for a later `wandb sync`.",
    )
    dir: str = Field("", description="Local directory for W&B's run files on the node; empty: W&B's default.")


class TrackingConfig(Model):
    """Experiment trackers a pipeline (or one stage) logs to."""

    mlflow: MlflowConfig | None = Field(None, description="An MLflow tracking server.")
    wandb: WandbConfig | None = Field(None, description="Weights & Biases.")
    required: bool = Field(
        True,
        description="true: `llmctl submit` refuses to start when a tracker cannot be reached; false: warn once "
        "and run without it.",
    )

    @property
    def enabled(self) -> bool:
        return self.mlflow is not None or self.wandb is not None

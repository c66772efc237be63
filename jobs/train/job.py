"""`TrainJob`: everything a training worker needs, built on the driver from a stage spec and pickled to workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.train import deepspeed_config
from jobs.train.model import ModelSource
from jobs.train.objectives import Objective
from pipelines.artifacts import STATE_DIR
from pipelines.spec.train import OptimConfig, ScheduleConfig


@dataclass(frozen=True)
class TrainJob:
    stage: str  # stage name, for log lines
    model: ModelSource
    objective: Objective
    optim: OptimConfig
    schedule: ScheduleConfig
    deepspeed: dict[str, Any]  # the full engine config (deepspeed_config.build)
    precision: str  # resolved: fp32 | bf16 | fp16
    zero_stage: int
    offload_optimizer: bool
    activation_checkpointing: bool
    use_gpu: bool
    tensorboard_uri: str
    export_uri: str | None = None  # where rank 0 writes the Hugging Face model at the end; None skips export
    tokenizer_uri: str | None = None  # tokenizer files copied into the export

    @property
    def export_dtype(self) -> str:
        return {"bf16": "bfloat16", "fp16": "float16"}.get(self.precision, "float32")


def for_stage(
    stage: str, spec: Any, model: ModelSource, objective: Objective, out: Any, tokenizer_uri: str | None
) -> TrainJob:
    """The job of a training stage spec (anything with deepspeed, optim, schedule and scaling configs) writing
    to the stage context `out`: TensorBoard under `_state/` (kept across resubmissions), the model in `model/`."""
    use_gpu = spec.scaling.use_gpu
    workers = spec.scaling.num_workers
    return TrainJob(
        stage=stage,
        model=model,
        objective=objective,
        optim=spec.optim,
        schedule=spec.schedule,
        deepspeed=deepspeed_config.build(spec.deepspeed, spec.optim, spec.schedule, workers, use_gpu),
        precision=spec.deepspeed.resolved_precision(use_gpu),
        zero_stage=spec.deepspeed.resolved_stage(workers),
        offload_optimizer=spec.deepspeed.offload_optimizer,
        activation_checkpointing=spec.deepspeed.activation_checkpointing,
        use_gpu=use_gpu,
        tensorboard_uri=out.path(STATE_DIR, "tensorboard"),
        export_uri=out.path("model"),
        tokenizer_uri=tokenizer_uri,
    )

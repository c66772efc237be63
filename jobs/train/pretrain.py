"""The `pretrain` stage: causal-LM pretraining of a Llama model on curated Parquet text (Ray Train + DeepSpeed).

Writes `model/` (Hugging Face directory incl. tokenizer files), `tensorboard/`, and keeps Ray Train checkpoints
under `_state/` (which the driver preserves) so a resubmitted run resumes where the last one stopped.
"""

from __future__ import annotations

import time
from typing import Any

from jobs.context import StageContext
from jobs.train import launch, sources
from jobs.train.job import TrainJob, for_stage
from jobs.train.model import ModelSource, model_config
from jobs.train.objectives import CausalLM
from pipelines import storage
from pipelines.artifacts import STATE_DIR
from pipelines.spec.train import PretrainStage


def run(ctx: StageContext) -> dict[str, Any]:
    started = time.time()
    spec: PretrainStage = ctx.spec
    objective = build_objective(ctx, spec)
    job = build_job(ctx, spec, objective)
    ctx.log(
        "training %s steps on %d worker(s), ZeRO-%d, %s",
        spec.schedule.steps, spec.scaling.num_workers, job.zero_stage, job.precision,
    )  # fmt: skip
    result = launch.fit(job, objective.build_datasets(), spec.scaling, spec.failure, ctx.path(STATE_DIR))
    copy_tree(job.tensorboard_uri, ctx.path("tensorboard"))
    return summarize(result.return_value or result.metrics, wall_s=time.time() - started, model_uri=ctx.path("model"))


def build_objective(ctx: StageContext, spec: PretrainStage) -> CausalLM:
    tokenizer = sources.tokenizer_info(sources.resolve(ctx, spec.tokenizer), f"stages.{ctx.name}.tokenizer")
    files = sources.parquet_files(sources.resolve(ctx, spec.data), f"stages.{ctx.name}.data")
    return CausalLM(
        files=files,
        tokenizer=tokenizer,
        text_column=spec.text_column,
        seq_len=spec.schedule.seq_len,
        val_fraction=spec.val_fraction,
        materialize=spec.materialize,
    )


def build_job(ctx: StageContext, spec: PretrainStage, objective: CausalLM) -> TrainJob:
    model = ModelSource(config=model_config(spec.model, objective.tokenizer, spec.schedule.seq_len))
    return for_stage(ctx.name, spec, model, objective, ctx, tokenizer_uri=objective.tokenizer.uri)


def copy_tree(src: str, dst: str) -> None:
    """Copy a directory between two storage locations (event files kept under _state/ into the stage output)."""
    if storage.exists(src):
        with storage.local_copy(src) as local:
            storage.upload_dir(local, dst)


def summarize(metrics: dict[str, Any], wall_s: float, model_uri: str) -> dict[str, Any]:
    """The stage's _SUCCESS metrics: rank 0's final metrics plus where the model is and the stage wall time."""
    return {**metrics, "model": model_uri, "wall_s": round(wall_s, 3)}

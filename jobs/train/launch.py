"""Run a `TrainJob` on Ray Train: N workers in a placement group, one torch process group, DeepSpeed inside.

Checkpoints go to `<state_uri>/train/`; Ray Train restores its checkpoint list from there, so a resubmitted run
(same stage output, same `_state/`) continues from the latest checkpoint, and `max_failures` restarts a group
that lost a worker from it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from jobs.train.job import TrainJob
from jobs.train.loop import train_worker
from pipelines import storage
from pipelines.spec.base import Scaling
from pipelines.spec.train import FailureConfig

if TYPE_CHECKING:
    import ray.data
    import ray.train

RUN_NAME = "train"

# How often Ray Train's controller polls its workers (Ray's default: 2 s). A worker's report waits until a poll has
# collected the one before it, and the stage learns that training ended only at the next poll: on the default, a
# short stage spent seconds of every checkpoint and its end waiting. Ray Train passes this variable from the driver's
# environment to its controller and workers; a value already set there wins.
HEALTH_CHECK_INTERVAL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def fit(
    job: TrainJob,
    datasets: dict[str, ray.data.Dataset],
    scaling: Scaling,
    failure: FailureConfig,
    state_uri: str,
) -> ray.train.Result:
    """Train to completion (or until failures are exhausted, which raises) and return Ray Train's result."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    os.environ.setdefault(*HEALTH_CHECK_INTERVAL)

    trainer = TorchTrainer(
        train_loop_per_worker=train_worker,
        train_loop_config={"job": job, "splits": sorted(datasets)},
        scaling_config=scaling_config(scaling),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            failure_config=ray.train.FailureConfig(max_failures=failure.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.schedule.keep_checkpoints),
            **storage_args(state_uri),
        ),
        datasets=datasets,
        # Only the training split is sharded (one streaming split for all workers); each worker reads validation
        # batches from the whole small split itself and keeps its share (loop.TrainLoop.validation_batches), which
        # saves the second split coordinator actor every stage would otherwise start for its first evaluation.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    return trainer.fit()


def scaling_config(scaling: Scaling) -> ray.train.ScalingConfig:
    import ray.train

    resources: dict[str, float] = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=scaling.num_workers,
        use_gpu=scaling.use_gpu,
        resources_per_worker=resources,
        placement_strategy=scaling.strategy,
    )


def storage_args(state_uri: str) -> dict[str, Any]:
    """RunConfig storage arguments; S3 goes through our pyarrow filesystem so AWS_ENDPOINT_URL (MinIO) applies."""
    if not storage.is_remote(state_uri):
        return {"storage_path": storage.absolute(state_uri)}
    fs, path = storage.filesystem(state_uri)
    return {"storage_path": path, "storage_filesystem": fs}

"""Run a `TrainJob` on Ray Train: N workers in a placement group, one torch process group, DeepSpeed inside.

Checkpoints go to `<state_uri>/train/`; Ray Train restores its checkpoint list from there, so a resubmitted run
(same stage output, same `_state/`) continues from the latest checkpoint, and `max_failures` restarts a group
that lost a worker from it.
"""

from __future__ import annotations

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

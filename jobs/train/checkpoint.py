"""Resumable training state as Ray Train checkpoints: DeepSpeed's engine state plus the loop's counters.

Every rank saves its own DeepSpeed shards into a local directory and reports it; Ray Train merges the ranks'
directories into one checkpoint in the run's storage. On (re)start each rank loads the latest checkpoint with
`engine.load_checkpoint`, which reads the shards of every rank it needs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

STATE_FILE = "trainer_state.json"
DS_TAG = "deepspeed"


@dataclass
class TrainerState:
    """The loop's position: optimizer steps taken, where in the data stream, and time spent."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed (skipped on resume)
    tokens: int = 0  # tokens trained on, all ranks
    loop_time_s: float = 0.0  # training-loop wall time over all attempts (for time budgets)


def save(engine: Any, state: TrainerState, metrics: dict[str, Any], rank: int) -> None:
    """Checkpoint the engine and `state`, reporting `metrics` with it (a barrier across ranks)."""
    import ray.train

    local = tempfile.mkdtemp(prefix="llmctl-ckpt-")
    try:
        engine.save_checkpoint(local, tag=DS_TAG)
        if rank == 0:
            with open(os.path.join(local, STATE_FILE), "w") as f:
                json.dump(asdict(state), f)
        checkpoint = ray.train.Checkpoint.from_directory(local)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step_{state.step:08d}")
    finally:
        shutil.rmtree(local, ignore_errors=True)


def restore(engine: Any) -> TrainerState | None:
    """Load the latest reported checkpoint into `engine`; None when the run starts fresh."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as path:
        load_path, _ = engine.load_checkpoint(
            path, tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed found no engine state in checkpoint {checkpoint.path}")
        with open(os.path.join(path, STATE_FILE)) as f:
            return TrainerState(**json.load(f))

"""Finding a run record and reading what its stages committed.

A run record is `<storage>/<pipeline>/runs/<run_id>/` with `plan.json` and `spec.yaml` (written by `llmctl submit`).
Each planned stage's output directory holds its `_SUCCESS` marker (timings and metrics), a data stage's
`stats.json`, and a training stage's TensorBoard event files (`tensorboard/`, or `_state/tensorboard/` while it is
unfinished).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines import storage
from pipelines.artifacts import MARKER
from pipelines.errors import StorageError
from pipelines.plan import Plan, PlannedStage
from pipelines.scalars import Series, stage_scalars


@dataclass
class StageRecord:
    stage: PlannedStage
    marker: dict[str, Any] | None  # None: the stage has not finished
    stats: dict[str, Any] | None = None  # a data stage's stats.json
    scalars: dict[str, Series] = field(default_factory=dict)
    tensorboard_uri: str | None = None  # where the scalars were read from

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def kind(self) -> str:
        return self.stage.kind

    @property
    def metrics(self) -> dict[str, Any]:
        return (self.marker or {}).get("metrics", {})


@dataclass
class RunRecord:
    plan: Plan
    uri: str
    spec_text: str
    submitted: float | None
    stages: list[StageRecord]

    @property
    def run_id(self) -> str:
        return self.plan.run_id

    @property
    def finished(self) -> list[StageRecord]:
        return [s for s in self.stages if s.marker is not None]


def find_run(ref: str, root: str) -> str:
    """The run directory of `ref`: a run directory itself, a run id under `root`, or a pipeline name under `root`
    (its most recently submitted run)."""
    if storage.exists(storage.join(ref, "plan.json")):
        return ref if storage.is_remote(ref) else storage.absolute(ref)
    root = root if storage.is_remote(root) else storage.absolute(root)
    pipelines = [name for name, _ in _children(root)]
    for pipeline in pipelines:
        candidate = storage.join(root, pipeline, "runs", ref)
        if storage.exists(storage.join(candidate, "plan.json")):
            return candidate
    runs = [(mtime, name) for name, mtime in _children(storage.join(root, ref, "runs"))
            if storage.exists(storage.join(root, ref, "runs", name, "plan.json"))]  # fmt: skip
    if runs:
        return storage.join(root, ref, "runs", max(runs)[1])
    found = ", ".join(pipelines) or "none"
    raise StorageError(
        f"no run '{ref}' under {root}: it is neither a run id (as `llmctl submit` and `llmctl list` print it, e.g. "
        f"tiny-3b3e1c5c) nor the name of a pipeline with runs there (pipelines found: {found}). Pass the pipeline's "
        f"storage with --storage (the `storage:` of its YAML, a path or s3://...)."
    )


def _children(uri: str) -> list[tuple[str, float]]:
    """(name, mtime) of the directories directly under `uri`; none when it does not exist."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return [(i.base_name, i.mtime.timestamp() if i.mtime else 0.0) for i in infos
            if i.type == pafs.FileType.Directory]  # fmt: skip


def load_run(run_uri: str) -> RunRecord:
    """Everything the report shows of a run; refuses a run none of whose stages has finished."""
    plan = Plan.from_json(storage.read_json(storage.join(run_uri, "plan.json")))
    spec_uri = storage.join(run_uri, "spec.yaml")
    spec_text = storage.read_text(spec_uri) if storage.exists(spec_uri) else ""
    record = RunRecord(plan, run_uri, spec_text, _mtime(storage.join(run_uri, "plan.json")),
                       [load_stage(s) for s in plan.stages])  # fmt: skip
    if not record.finished:
        names = ", ".join(s.name for s in plan.stages)
        raise StorageError(
            f"run {plan.run_id} has no finished stage yet: none of its stages ({names}) has a {MARKER} marker "
            f"under {storage.join(plan.storage, plan.pipeline)}. Wait for its job to finish a stage "
            f"(`llmctl status {plan.run_id}`), or resubmit the pipeline with `llmctl submit`, then run "
            f"`llmctl report {plan.run_id}` again."
        )
    return record


def load_stage(stage: PlannedStage) -> StageRecord:
    marker = storage.read_json(stage.marker_uri) if storage.exists(stage.marker_uri) else None
    record = StageRecord(stage, marker)
    stats_uri = storage.join(stage.uri, "stats.json")
    if stage.kind == "data" and marker is not None and storage.exists(stats_uri):
        record.stats = storage.read_json(stats_uri)
    record.scalars, record.tensorboard_uri = stage_scalars(stage.uri)
    return record


def _mtime(uri: str) -> float | None:
    fs, path = storage.filesystem(uri)
    info = fs.get_file_info(path)
    return info.mtime.timestamp() if info.mtime else None

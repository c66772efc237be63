"""The Ray job's entrypoint: execute a plan stage by stage.

    python -m jobs.driver <run_uri> [--dry-run]

`<run_uri>/plan.json` is written by `llmctl submit`. A stage whose `_SUCCESS` marker exists is skipped; any
other stage starts from an empty output directory (only `_state/`, e.g. training checkpoints, survives), runs,
and is committed by writing the marker last. A killed job therefore resumes at the first unfinished stage.
With --dry-run no stage runs: each one's placement groups are reserved and released (jobs.placement), and the
summary says where every role would land.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from typing import Any

from jobs.context import StageContext, StageOutput
from jobs.registry import load_runner
from jobs.tracking import RunTracker
from pipelines import storage
from pipelines.artifacts import STATE_DIR, SUMMARY_PREFIX
from pipelines.errors import LlmctlError
from pipelines.plan import Plan, PlannedStage
from pipelines.spec import Pipeline

log = logging.getLogger("llmctl")


def main(run_uri: str, dry_run: bool = False) -> int:
    _plain_log_lines()
    plan = Plan.from_json(storage.read_json(storage.join(run_uri, "plan.json")))
    pipeline = Pipeline.model_validate(plan.spec)
    if dry_run:
        return place_stages(plan, pipeline)
    outputs: dict[str, StageOutput] = {}
    summary: list[dict[str, Any]] = []
    tracker = RunTracker(plan, pipeline, os.environ.get("RAY_JOB_SUBMISSION_ID", ""))
    for stage in plan.stages:
        try:
            outputs[stage.name], outcome = run_stage(plan, pipeline, stage, outputs, tracker)
        except LlmctlError as exc:
            print(f"error: stage {stage.name} failed: {exc}", file=sys.stderr, flush=True)
            tracker.close(ok=False)
            return 1
        summary.append({"stage": stage.name, "kind": stage.kind, "outcome": outcome, "uri": stage.uri,
                        "metrics": outputs[stage.name].marker.get("metrics", {})})  # fmt: skip
    tracker.close(ok=True)
    runs = {"tracking": tracker.parent_ids()} if tracker.parents else {}
    print(SUMMARY_PREFIX + json.dumps({"run_id": plan.run_id, "stages": summary, **runs}, default=str), flush=True)
    return 0


def place_stages(plan: Plan, pipeline: Pipeline) -> int:
    """--dry-run: every stage's placement groups, reserved on the cluster and released; no stage runs."""
    from jobs.placement import dry_run

    _connect()
    summary: list[dict[str, Any]] = []
    for stage in plan.stages:
        try:
            metrics = dry_run(stage.name, pipeline.stages[stage.name])
        except LlmctlError as exc:
            print(f"error: stage {stage.name} failed: {exc}", file=sys.stderr, flush=True)
            return 1
        log.info(f"[{stage.name}] placed: {metrics['placement'] or 'nothing to place (Ray tasks)'}")
        summary.append({"stage": stage.name, "kind": stage.kind, "outcome": "placed", "uri": stage.uri,
                        "metrics": metrics})  # fmt: skip
    print(SUMMARY_PREFIX + json.dumps({"run_id": plan.run_id, "stages": summary, "dry_run": True}), flush=True)
    return 0


def _plain_log_lines() -> None:
    """`HH:MM:SS [stage] message` lines on stdout, the format `llmctl logs` shows. Our own handler, not the root
    logger's: Ray Serve LLM switches the root logger to JSON records when it is imported."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def _connect() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=True)


def run_stage(
    plan: Plan,
    pipeline: Pipeline,
    stage: PlannedStage,
    outputs: dict[str, StageOutput],
    tracker: RunTracker | None = None,
) -> tuple[StageOutput, str]:
    """Run one stage unless its marker says it is done; returns its output and 'cached' or 'ran'. `tracker`: the
    submission's experiment trackers (main opens them once for all stages)."""
    tracker = tracker or RunTracker(plan, pipeline)
    if not stage.always_run and storage.exists(stage.marker_uri):
        log.info(f"[{stage.name}] cached: {stage.uri}")
        marker = storage.read_json(stage.marker_uri)
        tracker.cached(stage, marker)
        return StageOutput(stage.name, stage.kind, stage.uri, marker), "cached"
    log.info(f"[{stage.name}] starting ({stage.kind}) -> {stage.uri}")
    _connect()  # only when a stage runs: a fully cached run never pays for joining the cluster
    _clear_outputs(stage.uri)
    tracking = tracker.stage(stage)  # None when the stage logs to no tracker
    if tracking is not None:
        tracking.start({k: v for k, v in stage.config.items() if k != "tracking"})
    ctx = StageContext(
        name=stage.name,
        kind=stage.kind,
        spec=pipeline.stages[stage.name],
        pipeline_name=plan.pipeline,
        run_id=plan.run_id,
        cache_key=stage.cache_key,
        out_uri=stage.uri,
        inputs={name: outputs[name] for name in stage.inputs},
        tracking=pipeline.tracking_for(stage.name),
    )
    started = time.time()
    try:
        metrics = load_runner(stage.runner)(ctx) or {}
    except Exception as exc:
        if isinstance(exc, LlmctlError):  # an expected failure: its message names the field and the fix
            log.error(f"[{stage.name}] failed: {exc}")
        else:
            log.error(f"[{stage.name}] failed:\n{traceback.format_exc()}")
        if tracking is not None:
            tracking.finish(None)
        raise
    marker = {
        "stage": stage.name, "kind": stage.kind, "cache_key": stage.cache_key, "run_id": plan.run_id,
        "started": started, "seconds": round(time.time() - started, 3), "metrics": metrics,
        "tracking": tracking.ids() if tracking is not None else {},
    }  # fmt: skip
    storage.write_json(stage.marker_uri, marker)
    log.info(f"[{stage.name}] done in {marker['seconds']:.1f}s")
    if tracking is not None:
        tracking.finish(marker)
    return StageOutput(stage.name, stage.kind, stage.uri, marker), "ran"


def _clear_outputs(uri: str) -> None:
    """Remove a half-written attempt, keeping resumable state (checkpoints) under _state/."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri)
    selector = pafs.FileSelector(path, recursive=False, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.base_name == STATE_DIR:
            continue
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
        else:
            fs.delete_file(info.path)
    storage.makedirs(uri)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["--dry-run"]):
        sys.exit("usage: python -m jobs.driver <run_uri> [--dry-run]")
    sys.exit(main(sys.argv[1], dry_run=sys.argv[2:] == ["--dry-run"]))

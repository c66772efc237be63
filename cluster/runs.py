"""The importable SDK behind `llmctl submit/plan/status`: the CLI only parses arguments and prints."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from cluster import jobs
from pipelines import load, plan, storage
from pipelines.artifacts import SUMMARY_PREFIX
from pipelines.capacity import devices
from pipelines.capacity.devices import Cluster
from pipelines.errors import JobFailed
from pipelines.spec import Pipeline


@dataclass
class Submission:
    run_id: str
    job_id: str
    target: jobs.Target
    plan: plan.Plan
    status: str = "PENDING"
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def make_plan(path: str, overrides: tuple[str, ...] = (), check_inputs: bool = True) -> plan.Plan:
    return plan.build(load.load(path, overrides), check_inputs=check_inputs)


def cluster_shape(shape: str | None = None, address: str | None = None) -> Cluster | None:
    """The cluster to plan for: a shape such as 2x8xH100-80GB, else the nodes of the cluster at `address`."""
    if shape:
        return devices.parse(shape)
    if address:
        return read_cluster(jobs.resolve_target(address, start_local=False))
    return None


def read_cluster(target: jobs.Target) -> Cluster:
    from cluster.multinode import alive_nodes

    return devices.from_ray_nodes(alive_nodes(target.dashboard_url))


def estimates(p: plan.Plan, cluster: Cluster) -> tuple[dict[str, Any], list[str]]:
    """Per-stage estimates on `cluster` and the problems that keep the plan from fitting it (empty if it fits).
    The plan's spec is the resolved pipeline (absolute paths), so the file is not read again."""
    from pipelines.capacity import fit

    pipeline = Pipeline.model_validate(p.spec)
    return fit.assess(pipeline.stages, cluster, pipeline.capacity.mfu)


def check_fits(p: plan.Plan, cluster: Cluster) -> None:
    """Raise CapacityError when a stage cannot run on `cluster`: nothing is submitted then."""
    from pipelines.capacity import fit

    pipeline = Pipeline.model_validate(p.spec)
    fit.check(pipeline.stages, cluster, pipeline.capacity.mfu)


def cached_stages(p: plan.Plan) -> dict[str, bool]:
    """Stage name -> whether its committed output already exists (and it would be skipped)."""
    return {s.name: (not s.always_run) and storage.exists(s.marker_uri) for s in p.stages}


def write_run_record(p: plan.Plan) -> str:
    """Store the resolved spec and plan with the run; the job reads the plan from here."""
    storage.write_json(storage.join(p.run_uri, "plan.json"), p.to_json())
    storage.write_text(storage.join(p.run_uri, "spec.yaml"), yaml.safe_dump(p.spec, sort_keys=False))
    return p.run_uri


def submit(
    path: str,
    overrides: tuple[str, ...] = (),
    address: str | None = None,
    wait: bool = True,
    on_log: Callable[[str], None] | None = None,
    dry_run: bool = False,
) -> Submission:
    """Validate, plan, submit as a Ray job; with `wait`, follow it and raise JobFailed unless it succeeds.
    A dry run reserves and releases every stage's placement groups instead of running the stages."""
    from cluster import tracking

    p = make_plan(path, overrides)
    warnings = tracking.check_reachable(Pipeline.model_validate(p.spec))
    target = jobs.resolve_target(address)
    check_fits(p, read_cluster(target))
    run_uri = write_run_record(p)
    metadata = {"pipeline": p.pipeline, "stages": ",".join(s.name for s in p.stages), "run_uri": run_uri}
    env = {**storage.job_env(), **key_digest_env(p)}
    entrypoint = f"python -m jobs.driver {run_uri}" + (" --dry-run" if dry_run else "")
    job_id = jobs.submit(target, p.run_id, entrypoint, metadata, env)
    sub = Submission(p.run_id, job_id, target, p, warnings=warnings)
    if wait:
        follow(sub, on_log)
    return sub


def key_digest_env(p: plan.Plan, environ: dict[str, str] | None = None) -> dict[str, str]:
    """SHA-256 digests of the API keys that stages (serve) name in `api_key_env`, read from this shell.

    The job runs on the cluster, whose environment may not hold the keys; only their digests travel with it.
    """
    from services.auth import DIGESTS_ENV, key_digests

    environ = os.environ if environ is None else environ
    names = sorted({n for s in p.stages for n in s.config.get("api_key_env", [])})
    found = {n: key_digests([n], [], environ) for n in names if environ.get(n, "").strip(" ,")}
    return {DIGESTS_ENV: json.dumps(found)} if found else {}


def follow(sub: Submission, on_log: Callable[[str], None] | None = None) -> Submission:
    chunks: list[str] = []

    def collect(chunk: str) -> None:
        chunks.append(chunk)
        if on_log:
            on_log(chunk)

    sub.status = jobs.wait(sub.target, sub.job_id, collect, last_line=SUMMARY_PREFIX)
    text = "".join(chunks) if chunks else jobs.logs(sub.target, sub.job_id)
    sub.summary = parse_summary(text)
    if sub.status != "SUCCEEDED":
        raise JobFailed(
            f"run {sub.run_id} ended {sub.status} (job {sub.job_id}). See `llmctl logs {sub.run_id}` or the "
            f"dashboard at {sub.target.dashboard_url}/#/jobs/{sub.job_id}; resubmit to resume after the last "
            f"finished stage."
        )
    return sub


def parse_summary(log_text: str) -> dict[str, Any]:
    for line in reversed(log_text.splitlines()):
        if line.startswith(SUMMARY_PREFIX):
            return json.loads(line[len(SUMMARY_PREFIX) :])
    return {}

"""Submitting and following pipeline runs through the Ray Jobs API.

A run is the deterministic id of a resolved spec; each submission of it is one Ray job whose metadata carries
the run id, so `status/logs/stop RUN_ID` find the latest job of a run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cluster import local
from pipelines.errors import ClusterError

PACKAGES = ("cli", "pipelines", "jobs", "cluster", "services")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass(frozen=True)
class Target:
    """Where jobs go: the dashboard URL of a cluster, and whether it is the embedded local head."""

    dashboard_url: str
    is_local: bool


def resolve_target(address: str | None, start_local: bool = True) -> Target:
    """--address, else RAY_ADDRESS, else the local head (started on first use). Checks it answers."""
    address = address or os.environ.get("RAY_ADDRESS") or ""
    if address in ("", "local", "auto"):
        head = local.LocalHead()
        if start_local:
            local.start(head)
        return _checked(Target(head.dashboard_url, is_local=True), "the local head")
    return _checked(Target(_dashboard_url(address), is_local=False), f"--address {address}")


def _dashboard_url(address: str) -> str:
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    if address.startswith("ray://"):
        host = address[len("ray://") :].split(":")[0]
        return f"http://{host}:8265"  # the Jobs API lives on the dashboard port, not the Ray Client port
    return f"http://{address}"


def _checked(target: Target, label: str) -> Target:
    import ray

    version = local.dashboard_version(target.dashboard_url, timeout=5.0)
    if version is None:
        raise ClusterError(
            f"cannot reach a Ray dashboard at {target.dashboard_url} ({label}). Check the address and that the "
            f"cluster is up, or omit --address to use the local head (`llmctl cluster up`)."
        )
    theirs = version.get("ray_version")
    if theirs and theirs != ray.__version__:
        raise ClusterError(
            f"the cluster at {target.dashboard_url} runs Ray {theirs} but this client has Ray {ray.__version__}; "
            f"install ray=={theirs} here or run the cluster on Ray {ray.__version__}."
        )
    return target


def client(target: Target):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(target.dashboard_url)


def runtime_env(env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """Ship the project's packages with the job so the cluster runs exactly this version of llmctl."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {
        "py_modules": [os.path.join(root, p) for p in PACKAGES],
        "excludes": ["__pycache__", "*.pyc"],
        "env_vars": {"PYTHONUNBUFFERED": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **(env_vars or {})},
    }


def submit(
    target: Target, run_id: str, entrypoint: str, metadata: dict[str, str], env_vars: dict[str, str] | None = None
) -> str:
    """Submit one job for the run; refuses while another job of the same run is still going."""
    c = client(target)
    running = [j for j in jobs_of(target, run_id) if str(j.status) not in TERMINAL]
    if running:
        raise ClusterError(
            f"run {run_id} is already running as job {running[0].submission_id}; follow it with "
            f"`llmctl logs -f {run_id}` or stop it with `llmctl stop {run_id}`."
        )
    submission_id = f"{run_id}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    with _quiet(UPLOAD_LOGGERS):
        return c.submit_job(
            entrypoint=entrypoint,
            submission_id=submission_id,
            runtime_env=runtime_env(env_vars),
            metadata={"llmctl": "1", "llmctl_run_id": run_id, **metadata},
        )


# Ray logs every package it zips and uploads at INFO on the submitting terminal; the user watches the stage table.
UPLOAD_LOGGERS = ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging",
                  "ray.dashboard.modules.job.sdk")  # fmt: skip


@contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def list_runs(target: Target) -> list:
    """Jobs submitted by llmctl, newest first."""
    jobs = [j for j in client(target).list_jobs() if (j.metadata or {}).get("llmctl") == "1"]
    return sorted(jobs, key=lambda j: j.start_time or 0, reverse=True)


def jobs_of(target: Target, run_id: str) -> list:
    return [j for j in list_runs(target) if (j.metadata or {}).get("llmctl_run_id") == run_id]


def find_job(target: Target, run_or_job_id: str):
    """The latest job of a run id, or the job with that submission id."""
    for job in list_runs(target):
        meta = job.metadata or {}
        if job.submission_id == run_or_job_id or meta.get("llmctl_run_id") == run_or_job_id:
            return job
    raise ClusterError(
        f"no llmctl run or job '{run_or_job_id}' on {target.dashboard_url}; `llmctl list` shows the runs there."
    )


def status(target: Target, job_id: str) -> str:
    return str(client(target).get_job_status(job_id))


def stop(target: Target, job_id: str) -> bool:
    return client(target).stop_job(job_id)


def logs(target: Target, job_id: str) -> str:
    return client(target).get_job_logs(job_id)


def follow(target: Target, job_id: str) -> Iterator[str]:
    """Log chunks as the job produces them, until it ends."""
    c = client(target)
    loop = asyncio.new_event_loop()
    agen = c.tail_job_logs(job_id)
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


def wait(
    target: Target,
    job_id: str,
    on_chunk: Callable[[str], None] | None = None,
    poll: float = 0.5,
    last_line: str | None = None,
) -> str:
    """Block until the job ends; stream its log to `on_chunk` when given. Returns the final status.

    `last_line` is the prefix of the line a job prints last when it succeeds: the stream stops there rather than
    when the Jobs API closes it (a second or two after the job ends), and the status is then polled quickly."""
    if on_chunk is not None:
        try:
            for chunk in follow(target, job_id):
                on_chunk(chunk)
                if last_line is not None and _has_line(chunk, last_line):
                    poll = min(poll, 0.1)
                    break
        except RuntimeError:
            pass  # the log stream can close early; the status poll below is authoritative
    while (state := status(target, job_id)) not in TERMINAL:
        time.sleep(poll)
    return state


def _has_line(chunk: str, prefix: str) -> bool:
    return chunk.startswith(prefix) or f"\n{prefix}" in chunk

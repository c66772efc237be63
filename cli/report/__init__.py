"""`llmctl report RUN`: one self-contained HTML file describing a run, built from what its stages committed.

`records` finds the run record and reads each stage's marker, data statistics and TensorBoard scalars; `charts`
draws them with matplotlib (imported only here, never by `llmctl --help` or `validate`); `page` assembles the HTML
with every chart inlined, so the file opens anywhere without a network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cli.report.page import Links, render
from cli.report.records import RunRecord, StageRecord, find_run, load_run
from pipelines import storage
from pipelines.errors import LlmctlError, StorageError

__all__ = ["Links", "Report", "RunRecord", "StageRecord", "find_run", "load_run", "render", "write_report"]


@dataclass(frozen=True)
class Report:
    path: str
    run: RunRecord
    links: Links

    @property
    def tensorboard_command(self) -> str | None:
        """The `tensorboard` line for every stage with event files (one logdir, or named logdirs for several)."""
        dirs = [(s.name, s.tensorboard_uri) for s in self.run.stages if s.tensorboard_uri]
        if not dirs:
            return None
        if len(dirs) == 1:
            return f"tensorboard --logdir {dirs[0][1]}"
        return "tensorboard --logdir_spec " + ",".join(f"{name}:{uri}" for name, uri in dirs)


def write_report(ref: str, storage_root: str, out: str | None = None, address: str | None = None) -> Report:
    """Find the run (`ref`: run id, pipeline name or run directory), render its report and write it to `out`
    (default: report.html in a local run record, else ./report-<run id>.html)."""
    target = _target(address)
    try:
        run_uri = find_run(ref, storage_root)
    except StorageError:
        run_uri = _run_uri_from_jobs(target, ref)
        if run_uri is None:
            raise
    run = load_run(run_uri)
    links = _links(target, address, run.run_id)
    path = out or (f"report-{run.run_id}.html" if storage.is_remote(run_uri) else storage.join(run_uri, "report.html"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(run, links))
    return Report(os.path.abspath(path), run, links)


def _target(address: str | None):
    """The cluster to link to and look runs up on, or None when none answers (the report needs no cluster)."""
    from cluster import jobs

    try:
        return jobs.resolve_target(address, start_local=False)
    except LlmctlError:
        return None


def _run_uri_from_jobs(target, ref: str) -> str | None:
    """The run record a job of run id or pipeline `ref` was submitted with (its `run_uri` metadata)."""
    if target is None:
        return None
    from cluster import jobs

    for job in jobs.list_runs(target):  # newest first
        meta = job.metadata or {}
        if ref in (meta.get("llmctl_run_id"), meta.get("pipeline")) and meta.get("run_uri"):
            return meta["run_uri"]
    return None


def _links(target, address: str | None, run_id: str) -> Links:
    from cluster import jobs, local

    if target is None:  # not reachable now: link where the dashboard would be
        return Links(jobs._dashboard_url(address) if address else local.LocalHead().dashboard_url)
    found = [{"submission_id": j.submission_id, "status": str(j.status)} for j in jobs.jobs_of(target, run_id)]
    return Links(target.dashboard_url, found)

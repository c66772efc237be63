"""Run a lifecycle operation inside the cluster as a short Ray job, for callers that only have a dashboard URL.

`python -m services.remote scale NAME --max 3` is the job's entrypoint: it joins the cluster as a driver, runs the
operation from services.lifecycle and prints one JSON line that the submitting side parses.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shlex
import socket
import sys
import time
from typing import Any
from urllib.parse import urlparse

from pipelines.errors import ClusterError, LlmctlError, SpecError

RESULT_PREFIX = "LLMCTL_RESULT "
PACKAGES = ("services", "pipelines", "cluster")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_local(address: str) -> bool:
    host = urlparse(address).hostname or ""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _python(address: str) -> str:
    """A head on this machine was started from this installation, so its Python is ours; elsewhere the
    cluster's own `python` (its image) runs the job."""
    return shlex.quote(sys.executable) if _is_local(address) else "python"


def run(address: str, argv: list[str], timeout_s: float = 600.0) -> dict[str, Any]:
    """Submit `python -m services.remote ARGV` to the cluster at `address`, wait, and return its JSON result."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Ray dashboard at {address}: {exc}") from exc
    runtime_env = {"py_modules": [os.path.join(ROOT, p) for p in PACKAGES]}
    entrypoint = f"{_python(address)} -m services.remote {shlex.join(argv)}"
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata={"llmctl": "serve"})
    deadline = time.monotonic() + timeout_s
    while client.get_job_status(job_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise ClusterError(f"`llmctl serve {argv[0]}` did not finish in {timeout_s:.0f}s (Ray job {job_id}).")
        time.sleep(0.2)
    return _result(client.get_job_logs(job_id), job_id)


def _result(logs: str, job_id: str) -> dict[str, Any]:
    lines = [line for line in logs.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise ClusterError(f"Ray job {job_id} ended without a result; its log ends with:\n{logs[-2000:]}")
    payload = json.loads(lines[-1][len(RESULT_PREFIX) :])
    if "error" in payload:
        error_cls = SpecError if payload.get("type") == "SpecError" else ClusterError
        raise error_cls(payload["error"])
    return payload["result"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.remote")
    parser.add_argument("op", choices=("status", "scale", "down"))
    parser.add_argument("name")
    parser.add_argument("--min", dest="min_replicas", type=int)
    parser.add_argument("--max", dest="max_replicas", type=int)
    parser.add_argument("--target", dest="target_ongoing_requests", type=float)
    parser.add_argument("--replicas", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    from services import lifecycle

    args = _parser().parse_args(argv)
    try:
        if args.op == "status":
            result = lifecycle.status(args.name, "auto")
        elif args.op == "down":
            result = lifecycle.down(args.name, "auto")
        else:
            changes = {k: getattr(args, k) for k in ("min_replicas", "max_replicas", "target_ongoing_requests")}
            result = lifecycle.scale(args.name, "auto", replicas=args.replicas, **changes)
    except LlmctlError as exc:
        print(RESULT_PREFIX + json.dumps({"error": str(exc), "type": type(exc).__name__}), flush=True)
        return 2
    print(RESULT_PREFIX + json.dumps({"result": result}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

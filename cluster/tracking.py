"""The tracking servers a pipeline logs to: a local MLflow server that starts like the Ray head, and the check
`llmctl submit` makes before anything runs.

`llmctl tracking up` runs `mlflow server` on loopback: runs and the model registry in SQLite, artifacts under the
pipeline's storage, served through the server itself (`--serve-artifacts`), so clients on any node upload over
HTTP and need no access to that directory. Its process id and address live in `<root>/server.json`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from pipelines import storage
from pipelines.errors import ClusterError, SpecError
from pipelines.spec import Pipeline

DEFAULT_PORT = 5000
STATE = "server.json"


@dataclass(frozen=True)
class Server:
    root: str  # local directory: mlflow.db, artifacts/, server.log, server.json
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"


def healthy(uri: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def up(server: Server, timeout: float = 300.0) -> Server:
    """Start the server unless one answers at its address; wait until it does."""
    if healthy(server.uri):
        return server
    if storage.is_remote(server.root):
        raise SpecError(
            f"--root {server.root}: the local MLflow server keeps its database on this machine; give a local "
            "directory (artifacts of a pipeline on S3 can still be logged through it)."
        )
    os.makedirs(os.path.join(server.root, "artifacts"), exist_ok=True)
    root = os.path.abspath(server.root)
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", server.host, "--port", str(server.port),
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", f"{root}/artifacts",
        "--serve-artifacts", "--workers", "1",
    ]  # fmt: skip
    log = open(os.path.join(root, "server.log"), "ab")
    # MLflow's background job runners (GenAI evaluation jobs) are not used by llmctl and slow the start.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    with open(os.path.join(root, STATE), "w") as f:
        json.dump({"pid": proc.pid, "uri": server.uri}, f)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(server.uri):
            return server
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = open(os.path.join(root, "server.log"), errors="replace").read()[-1500:]
    raise ClusterError(f"the MLflow server at {server.uri} did not start (log {root}/server.log):\n{tail}")


def down(server: Server, timeout: float = 20.0) -> bool:
    """Stop the server this root started; False when none was running."""
    path = os.path.join(server.root, STATE)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        pid = json.load(f)["pid"]
    os.unlink(path)
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a child of this process that exited is a zombie until reaped
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def attach(uri: str, run_id: str, path: str) -> None:
    """A file as an artifact of an MLflow run."""
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).log_artifact(run_id, path)


def check_reachable(pipeline: Pipeline) -> list[str]:
    """Before submitting: every MLflow server the pipeline logs to answers. An unreachable one stops the submit
    (naming it), or with `required: false` gives one warning (returned)."""
    warnings = []
    configs = [c for c in (pipeline.tracking, *(s.tracking for s in pipeline.stages.values())) if c and c.mlflow]
    for uri in sorted({c.mlflow.tracking_uri for c in configs}):
        if healthy(uri):
            continue
        required = any(c.required for c in configs if c.mlflow.tracking_uri == uri)
        message = (
            f"tracking.mlflow.tracking_uri: no MLflow server answers at {uri}. Start one with `llmctl tracking up` "
            "(or point tracking_uri at your team's server), or set tracking.required: false to run without it."
        )
        if required:
            raise SpecError(message)
        warnings.append(f"{message} The run goes on without MLflow.")
    return warnings

"""One Ray head per test session, on free ports and its own temp dir, so tests never touch a user's cluster.

Tests that call Ray directly take `ray_session` (this process connected as a driver); tests that submit
jobs take `ray_head` and pass `--address ray_head.dashboard_url`. Tests that need placement across nodes take
`two_nodes`: a head and a worker node of their own, for the module.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from cluster import local, multinode  # noqa: E402
from pipelines.errors import ClusterError  # noqa: E402

free_port = local.free_port  # tests import it from here

# Session fixtures every test directory may use: the chat data and the small chat models built from it.
pytest_plugins = ["tests.chat_models"]

# This process is a Ray driver like the nodes' own processes, which llmctl starts with usage stats off. With them
# on, Ray Data's usage poller thread here logs a traceback every few seconds (its Prometheus query fails), and on
# Python 3.11 formatting a traceback parses source with `ast`, which shares one recursion counter between threads
# (python/cpython#106905): a parse in a test at that moment fails with "AST constructor recursion depth mismatch".
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


# A Serve replica that stops (scale-down, rolling update, delete) first waits this long for HAProxy to stop
# routing to it. Ray's 30 s is meant for HAProxies on many nodes picking up the change; on loopback, where HAProxy
# is reconfigured within a second, 5 s still gives the rolling-update and autoscaling tests (which fail on any
# failed request) their margin and saves them 25 s per stopped replica.
NODE_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"}


@pytest.fixture(scope="session")
def ray_head():
    head = local.LocalHead(
        port=free_port(),
        dashboard_port=free_port(),
        client_port=free_port(),
        agent_port=free_port(),
        temp_dir=f"/tmp/llmctl-test-{os.getpid()}",
        num_cpus=8,
        env={**NODE_ENV, **local.own_serve_ports()},  # the two-node cluster's HAProxies run beside this one's
    )
    local.start(head)
    yield head
    import ray

    if ray.is_initialized():
        ray.shutdown()
    local.stop(head)


@pytest.fixture(scope="session")
def ray_session(ray_head):
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_head.gcs_address, log_to_driver=False)
    yield ray_head


# --- a second, multi-node cluster (cluster.multinode): a head and one worker node on loopback, started per module
# and only when a test asks for it. A module sets what the nodes' environment holds (e.g. AWS credentials, as an
# instance role gives a real node) by overriding `two_nodes_env` (a value of None removes the variable).


@pytest.fixture(scope="module")
def two_nodes_env() -> dict[str, str | None]:
    return {}


@pytest.fixture(scope="module")
def two_nodes(two_nodes_env):
    root = f"/tmp/llmctl-mn-{os.getpid()}"  # short: Ray's AF_UNIX socket paths under it must stay below 107 bytes
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**NODE_ENV, **two_nodes_env}.items():
            if value is None:
                mp.delenv(name, raising=False)
            else:
                mp.setenv(name, value)
        try:
            cluster = _start_two_nodes(root)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
    yield cluster
    multinode.stop(multinode.load(root))  # with the nodes that tests added or lost since (cluster.json)
    shutil.rmtree(root, ignore_errors=True)


def _start_two_nodes(root: str) -> multinode.MultiNode:
    try:
        return multinode.start(multinode.plan(root, workers=1, head_cpus=4, worker_cpus=4))
    except ClusterError:
        # Ray gives a raylet 30s to register; a machine busy with other test runs can miss that once.
        return multinode.start(multinode.plan(root, workers=1, head_cpus=4, worker_cpus=4))


@contextmanager
def s3_server(**env: str) -> Iterator[str]:
    """moto in server mode, in a process of its own on a free loopback port; yields its endpoint URL.

    Not ThreadedMotoServer: in this process its request threads call `ast.parse` (werkzeug builds its routes that
    way), and CPython 3.11 shares one AST recursion counter between threads (python/cpython#106905), so a parse
    here at the same moment fails with "AST constructor recursion depth mismatch"; pytest's own parse, while it
    prints the failure, then stops the whole session."""
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _accepts(port):  # a TCP connect, not a request: requests count against INITIAL_NO_AUTH_ACTION_COUNT
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server on port {port} did not start (exit code {server.poll()})")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real `mlflow server` (SQLite store, proxied artifacts) on a free loopback port, as `llmctl tracking up`
    starts it; yields its tracking URI."""
    from cluster import tracking

    server = tracking.Server(root=str(tmp_path_factory.mktemp("mlflow")), port=free_port())
    tracking.up(server)
    yield server.uri
    tracking.down(server)


def import_in_fresh_process(modules: str, heavy: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Import `modules` ("a, b.c") in a new interpreter; it exits non-zero naming any of `heavy` they pulled in."""
    code = (f"import sys, {modules};"
            f"heavy = [m for m in {heavy!r} if m in sys.modules];"
            "sys.exit(repr(heavy) if heavy else 0)")  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False

"""One Ray head per test session, on free ports and its own temp dir, so tests never touch a user's cluster.

Tests that call Ray directly take `ray_session` (this process connected as a driver); tests that submit
jobs take `ray_head` and pass `--address ray_head.dashboard_url`.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from cluster import local  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head():
    head = local.LocalHead(
        port=free_port(),
        dashboard_port=free_port(),
        client_port=free_port(),
        agent_port=free_port(),
        temp_dir=f"/tmp/llmctl-test-{os.getpid()}",
        num_cpus=8,
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

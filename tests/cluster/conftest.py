"""A second, multi-node cluster for the tests in this directory that need placement across nodes: a head and one
worker node on loopback (cluster.multinode), started per module and only when a test asks for it.

A module sets what the nodes' environment holds (e.g. AWS credentials, as an instance role gives a real node)
by overriding `two_nodes_env` (a value of None removes the variable).
"""

from __future__ import annotations

import os
import shutil

import pytest

from cluster import multinode
from pipelines.errors import ClusterError


@pytest.fixture(scope="module")
def two_nodes_env() -> dict[str, str | None]:
    return {}


@pytest.fixture(scope="module")
def two_nodes(two_nodes_env):
    root = f"/tmp/llmctl-mn-{os.getpid()}"  # short: Ray's AF_UNIX socket paths under it must stay below 107 bytes
    with pytest.MonkeyPatch.context() as mp:
        for name, value in two_nodes_env.items():
            if value is None:
                mp.delenv(name, raising=False)
            else:
                mp.setenv(name, value)
        try:
            cluster = start(root)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
    yield cluster
    multinode.stop(multinode.load(root))  # with the nodes that tests added or lost since (cluster.json)
    shutil.rmtree(root, ignore_errors=True)


def start(root: str) -> multinode.MultiNode:
    try:
        return multinode.start(multinode.plan(root, workers=1, head_cpus=4, worker_cpus=4))
    except ClusterError:
        # Ray gives a raylet 30s to register; a machine busy with other test runs can miss that once.
        return multinode.start(multinode.plan(root, workers=1, head_cpus=4, worker_cpus=4))

"""A multi-node Ray cluster on this machine: one head and N worker nodes, each its own raylet with its own
resources and node labels, all on loopback. The smallest cluster where placement across nodes is real.

    python -m cluster.multinode up [--workers 1] [--root /tmp/llmctl-mn]    # prints the dashboard URL
    llmctl submit pipelines/examples/tiny.yaml --address http://127.0.0.1:<dashboard port>
    python -m cluster.multinode status|down [--root /tmp/llmctl-mn]
    python -m cluster.multinode lose-worker|add-worker [--root /tmp/llmctl-mn]   # a machine lost, a replacement
    python -m cluster.multinode up --workers 2 --worker-gpus 4 --accelerator-type H100   # a simulated GPU cluster

Nodes carry the label `llmctl.io/role` (`head` or `worker`) and a custom resource (`llmctl_head: 1`,
`llmctl_worker_<i>: 1`), so a task or actor can be pinned with `label_selector={"llmctl.io/role": "worker"}`
or `resources={"llmctl_worker_0": 1}`. The cluster's ports and directories are kept in `<root>/cluster.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from typing import Any

from cluster import local
from pipelines.errors import ClusterError

ROLE_LABEL = "llmctl.io/role"
HEAD_RESOURCE = "llmctl_head"
WORKER_RESOURCE = "llmctl_worker_{}"
# A node that stops answering is declared dead after 3 missed checks 1 s apart, not Ray's 5 x 3 s: on loopback a
# live raylet always answers well within the 10 s each check waits, and failover tests wait less.
FAST_FAILURE_DETECTION = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
DEFAULT_ROOT = "/tmp/llmctl-mn"  # short: Ray's AF_UNIX socket paths under it must stay below 107 bytes


@dataclass(frozen=True)
class MultiNode:
    """A running head and its worker nodes."""

    root: str
    head: local.LocalHead
    workers: tuple[local.WorkerNode, ...]

    @property
    def dashboard_url(self) -> str:
        return self.head.dashboard_url

    @property
    def gcs_address(self) -> str:
        return self.head.gcs_address

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "head": asdict(self.head), "workers": [asdict(w) for w in self.workers]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MultiNode:
        workers = tuple(local.WorkerNode(**w) for w in data["workers"])
        return cls(data["root"], local.LocalHead(**data["head"]), workers)


def plan(root: str, workers: int = 1, head_cpus: int = 4, worker_cpus: int = 4, worker_gpus: int = 0,
         accelerator_type: str | None = None) -> MultiNode:  # fmt: skip
    """Ports, directories, resources and labels of a cluster under `root` (nothing started).

    `worker_gpus` makes it a simulated GPU cluster: each worker node declares that many GPUs (and, with
    `accelerator_type`, Ray's `accelerator_type:<type>` resource, as a real GPU node reports it) that it does not
    have. Placement groups and plans are real there; anything that touches CUDA is not (`llmctl submit --dry-run`).
    """
    gpu_type = {f"accelerator_type:{accelerator_type}": 1} if accelerator_type and worker_gpus else {}
    head = local.LocalHead(
        **{name: local.free_port() for name in ("port", "dashboard_port", "client_port", "agent_port")},
        temp_dir=os.path.join(root, "head"), num_cpus=head_cpus, node_ip="127.0.0.1",
        resources={HEAD_RESOURCE: 1}, labels={ROLE_LABEL: "head"}, system_config=FAST_FAILURE_DETECTION,
        env=local.own_serve_ports(),
    )  # fmt: skip
    nodes = tuple(
        local.WorkerNode(
            gcs_address=head.gcs_address,
            temp_dir=os.path.join(root, f"w{i}"),
            agent_port=local.free_port(),
            num_cpus=worker_cpus,
            resources={WORKER_RESOURCE.format(i): 1, **gpu_type},
            labels={ROLE_LABEL: "worker"},
            env=local.own_serve_ports(),
            num_gpus=worker_gpus,
        )
        for i in range(workers)
    )
    return MultiNode(root, head, nodes)


def start(cluster: MultiNode, timeout: float = 180.0) -> MultiNode:
    """Start the head, join the workers, and return once the head sees every node alive."""
    os.makedirs(cluster.root, exist_ok=True)
    try:
        local.start(cluster.head, timeout=timeout)
        for node in cluster.workers:
            local.join(node)
        wait_for_nodes(cluster.dashboard_url, 1 + len(cluster.workers), timeout)
    except BaseException:
        stop(cluster)
        raise
    return _record(cluster)


def stop(cluster: MultiNode) -> bool:
    """Stop every node (all at once: each may take seconds to exit on SIGTERM); True if anything ran."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1 + len(cluster.workers)) as pool:
        stopped = list(pool.map(local.stop, [cluster.head, *cluster.workers]))
    if os.path.exists(state_file(cluster.root)):
        os.remove(state_file(cluster.root))
    return any(stopped)


def lose_worker(cluster: MultiNode, index: int = 0) -> MultiNode:
    """SIGKILL every process of worker node `index` at once (a machine lost, not a clean shutdown) and return the
    cluster without it. Ray marks the node dead once its heartbeats stop; what ran there is retried elsewhere."""
    node = cluster.workers[index]
    local.stop(node, hard=True)
    return _record(replace(cluster, workers=tuple(w for w in cluster.workers if w is not node)))


def add_worker(cluster: MultiNode, cpus: int = 4, timeout: float = 120.0) -> MultiNode:
    """Join one more worker node (a replacement, as an autoscaler brings one) under the next unused name, and
    return once the head sees it alive."""
    index = next(i for i in range(1000) if not os.path.exists(os.path.join(cluster.root, f"w{i}")))
    resource = WORKER_RESOURCE.format(index)
    node = local.WorkerNode(
        gcs_address=cluster.gcs_address, temp_dir=os.path.join(cluster.root, f"w{index}"),
        agent_port=local.free_port(), num_cpus=cpus, resources={resource: 1}, labels={ROLE_LABEL: "worker"},
        env=local.own_serve_ports(),
    )  # fmt: skip
    local.join(node)
    deadline = time.monotonic() + timeout
    while not any(resource in n.get("resources_total", {}) for n in alive_nodes(cluster.dashboard_url)):
        if time.monotonic() > deadline:
            raise ClusterError(f"the new worker node ({resource}) is not alive at {cluster.dashboard_url}")
        time.sleep(0.5)
    return _record(replace(cluster, workers=(*cluster.workers, node)))


def _record(cluster: MultiNode) -> MultiNode:
    with open(state_file(cluster.root), "w") as f:
        json.dump(cluster.to_json(), f, indent=2)
    return cluster


def state_file(root: str) -> str:
    return os.path.join(root, "cluster.json")


def load(root: str) -> MultiNode:
    try:
        with open(state_file(root)) as f:
            return MultiNode.from_json(json.load(f))
    except FileNotFoundError:
        raise ClusterError(
            f"no multi-node cluster under {root} (no {state_file(root)}); start one with "
            f"`python -m cluster.multinode up --root {root}`."
        ) from None


def alive_nodes(dashboard_url: str) -> list[dict[str, Any]]:
    """Alive nodes as the head's state API lists them: node_id, is_head_node, labels, resources_total, ..."""
    url = f"{dashboard_url}/api/v0/nodes?limit=1000&detail=1"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            nodes = json.loads(resp.read())["data"]["result"]["result"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        raise ClusterError(f"cannot list the nodes at {url}: {exc}") from exc
    return [n for n in nodes if n.get("state") == "ALIVE"]


def wait_for_nodes(dashboard_url: str, count: int, timeout: float = 120.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            nodes = alive_nodes(dashboard_url)
        except ClusterError:
            nodes = []
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise ClusterError(f"{len(nodes)} of {count} Ray nodes alive at {dashboard_url} after {timeout:.0f}s")
        time.sleep(0.5)


def _describe(cluster: MultiNode) -> str:
    lines = [f"dashboard: {cluster.dashboard_url}   (llmctl submit PIPELINE --address {cluster.dashboard_url})"]
    for n in alive_nodes(cluster.dashboard_url):
        role = n.get("labels", {}).get(ROLE_LABEL, "?")
        custom = {k: v for k, v in n.get("resources_total", {}).items() if k.startswith("llmctl")}
        cpus, gpus = n.get("resources_total", {}).get("CPU"), n.get("resources_total", {}).get("GPU", 0)
        lines.append(f"  {role:7s} {n['node_id'][:12]}  CPU={cpus}  GPU={gpus}  {custom}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.multinode", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "lose-worker", "add-worker"])
    parser.add_argument("--root", default=DEFAULT_ROOT, help="directory for the nodes' temp dirs and cluster.json")
    parser.add_argument("--workers", type=int, default=1, help="worker nodes beside the head (up)")
    parser.add_argument("--head-cpus", type=int, default=4, help="logical CPUs of the head (up)")
    parser.add_argument("--worker-cpus", type=int, default=4, help="logical CPUs of each worker node (up, add-worker)")
    parser.add_argument("--worker-gpus", type=int, default=0,
                        help="GPUs each worker node declares without having them: a simulated GPU cluster (up)")
    parser.add_argument("--accelerator-type", default=None, help="their Ray accelerator type, e.g. H100 (up)")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            if os.path.exists(state_file(args.root)):
                raise ClusterError(f"a cluster is already recorded in {state_file(args.root)}; `down` it first.")
            cluster = start(plan(args.root, args.workers, args.head_cpus, args.worker_cpus, args.worker_gpus,
                                 args.accelerator_type))  # fmt: skip
        else:
            cluster = load(args.root)
        if args.command == "down":
            print("stopped" if stop(cluster) else "nothing was running")
        elif args.command == "lose-worker":
            if not cluster.workers:
                raise ClusterError("no worker node is left to lose; `add-worker` first.")
            lose_worker(cluster)
            print(f"SIGKILLed every process of worker node {cluster.workers[0].temp_dir}")
        else:
            if args.command == "add-worker":
                cluster = add_worker(cluster, args.worker_cpus)
            print(_describe(cluster))
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

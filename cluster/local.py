"""The embedded local Ray head: started once (like `ray start --head`), reused by later commands.

Its dashboard listens on 127.0.0.1:8265 by default, so the Ray dashboard and Jobs API work as on any
cluster. Several heads can coexist on one machine when each gets its own ports and temp dir (tests do this).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from pipelines.errors import ClusterError

# Serve's ingress and a model replica each take logical CPUs; on small machines Ray needs them overcommitted.
MIN_LOGICAL_CPUS = 8
HEAD_ENV = "LLMCTL_RAY_HEAD"
# Ray Serve reads these where its processes start (the nodes' environment), so a head is started with them.
# RAY_SERVE_ENABLE_HA_PROXY: HAProxy on each node forwards HTTP straight to the replicas' own HTTP servers, where
# Serve's Python proxy relays every streamed token through Ray. RAY_SERVE_THROUGHPUT_OPTIMIZED: Ray's documented
# profile for high request rates (user code on the replica's own event loop, buffered access logs, logs to files
# only). An environment that sets either to 0 keeps Ray's default.
SERVE_INGRESS_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
SERVE_ENV = {SERVE_INGRESS_ENV: "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# HAProxy runs Ray's default of 4 threads; a node started here gets no more than this machine's cores (on 2 cores,
# 4 threads cost HAProxy a quarter more CPU per streamed token, taken from the engine on the same cores).
HAPROXY_THREADS_ENV = "RAY_SERVE_HAPROXY_NBTHREAD"
# Besides the app's port, a node's HAProxy binds a stats and a Prometheus port on every interface (Ray's defaults
# 8404 and 9101), and refuses to start when another process holds them.
HAPROXY_PORT_ENV = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
# Ray starts its worker processes at nice 15 so that its control plane stays ahead of them on a busy machine. On a
# node llmctl starts, the workers are the workload: at nice 15 every runnable nice-0 process on the machine (the
# driver, a client, the raylet's own threads) takes a core from them outright, and a torch step waits for its
# slowest thread. On 2 cores that cost the pretrain stage a fifth of its tokens/s and more than doubled its wall
# time (bench/pretrain.py); the served engine's tokens/s at 1 and 8 streams rose by a tenth and a fifth (at 32 the
# change was within the bench's noise). At nice 0 the control plane still gets its fair share of the CPU.
WORKER_NICENESS_ENV = "RAY_worker_niceness"


@dataclass(frozen=True)
class LocalHead:
    """Ports and directories of one local head. Defaults match `ray start --head`."""

    port: int = 6379
    dashboard_port: int = 8265
    client_port: int = 10001
    agent_port: int = 52365
    temp_dir: str = "/tmp/llmctl-ray"
    num_cpus: int | None = None
    node_ip: str | None = None  # None: Ray picks this machine's address; "127.0.0.1" keeps the cluster on loopback
    resources: dict[str, float] | None = None  # custom resources (`ray start --resources`)
    labels: dict[str, str] | None = None  # node labels that tasks and actors select with `label_selector`
    system_config: dict[str, Any] | None = None  # Ray's internal settings for the cluster (`--system-config`)
    env: dict[str, str] | None = None  # extra environment of the node's processes (settings Ray reads at start)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def logical_cpus(self) -> int:
        return self.num_cpus or max(MIN_LOGICAL_CPUS, os.cpu_count() or 1)


@dataclass(frozen=True)
class WorkerNode:
    """A Ray node that joins a running head (`ray start --address`): a second node on this machine, with its own
    raylet, object store, resources and labels, so placement across nodes is real (multi-node tests).

    `temp_dir` must not contain the head's temp dir as a substring: `stop` finds a node's processes by it.
    """

    gcs_address: str
    temp_dir: str
    agent_port: int  # the dashboard agent's HTTP port; Ray's default (52365) is the default head's
    num_cpus: int = 2
    node_ip: str | None = "127.0.0.1"
    resources: dict[str, float] | None = None
    labels: dict[str, str] | None = None
    env: dict[str, str] | None = None
    num_gpus: int = 0  # GPUs the node declares to Ray (a simulated GPU node has none: nothing may use CUDA there)


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port that is free on this machine now (heads and nodes that share one machine need their own).

    Never one this process was handed before: callers take several before anything binds them, and the kernel
    may offer a just-closed port again (a head once got one port for both its dashboard and its client server)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def own_serve_ports() -> dict[str, str]:
    """Node environment giving the node's HAProxy free stats and Prometheus ports, for a node that shares its
    machine with other Ray nodes (tests, the multi-node harness); a lone head keeps Ray's defaults."""
    return {name: str(free_port()) for name in HAPROXY_PORT_ENV}


def dashboard_version(url: str, timeout: float = 2.0) -> dict | None:
    """The dashboard's /api/version answer, or None when nothing answers at `url`."""
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=timeout) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _ray_cli() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "ray")
    return beside if os.path.exists(beside) else (shutil.which("ray") or "ray")


def start(head: LocalHead = LocalHead(), timeout: float = 120.0) -> LocalHead:
    """Start the head unless its dashboard already answers; return once the Jobs API is usable."""
    if dashboard_version(head.dashboard_url):
        return head
    cmd = [
        _ray_cli(), "start", "--head",
        f"--port={head.port}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={head.dashboard_port}",
        f"--ray-client-server-port={head.client_port}",
        f"--dashboard-agent-listen-port={head.agent_port}",
        f"--num-cpus={head.logical_cpus()}",
        f"--temp-dir={head.temp_dir}",
        "--disable-usage-stats",
        *_node_args(head.node_ip, head.resources, head.labels),
        *([f"--system-config={json.dumps(head.system_config)}"] if head.system_config else []),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_node_env(head.temp_dir, head.gcs_address, head.env))
    if proc.returncode != 0:
        raise ClusterError(
            f"could not start the local Ray head (exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}\n"
            f"If another Ray is using port {head.port}, stop it with `llmctl cluster down` or pass --address."
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _jobs_api_ready(head.dashboard_url):
            return head
        time.sleep(0.5)
    stop(head)  # leave nothing behind that holds the ports
    raise ClusterError(f"the local Ray head started but its dashboard at {head.dashboard_url} never answered")


def _node_args(node_ip: str | None, resources: dict[str, float] | None, labels: dict[str, str] | None) -> list[str]:
    args = [f"--node-ip-address={node_ip}"] if node_ip else []
    if resources:
        args.append(f"--resources={json.dumps(resources)}")
    if labels:
        args.append("--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()))
    return args


def _node_env(temp_dir: str, gcs_address: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    # Job entrypoints run `python` from the node's PATH: make it this interpreter's.
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    # HEAD_ENV marks the processes of this node that keep their environment (helpers that outlive a worker).
    # RAY_ADDRESS makes a bare `ray.init()` in any of them join this cluster instead of starting a new one.
    # RAY_AUTH_MODE: Ray turns token authentication on for every new head once ~/.ray/auth_token exists, and any
    # bare `ray.init()` on this machine writes that file. A loopback head would then refuse the Jobs API and the
    # dashboard calls that carry no token. Its dashboard and Jobs API listen on 127.0.0.1 only.
    # SERVE_ENV: Serve's HAProxy ingress and throughput profile, HAProxy threads and workers at nice 0 (see the
    # constants), unless the environment says otherwise.
    defaults = {**SERVE_ENV, HAPROXY_THREADS_ENV: str(min(4, os.cpu_count() or 1)), WORKER_NICENESS_ENV: "0"}
    return {**defaults, **os.environ, **(extra or {}), "RAY_USAGE_STATS_ENABLED": "0", "PATH": path,
            HEAD_ENV: temp_dir, "RAY_ADDRESS": gcs_address, "RAY_AUTH_MODE": "disabled"}  # fmt: skip


def join(node: WorkerNode) -> WorkerNode:
    """Start a worker node and return once `ray start` reports it running (its raylet registered with the head)."""
    cmd = [
        _ray_cli(), "start", f"--address={node.gcs_address}",
        f"--num-cpus={node.num_cpus}", f"--num-gpus={node.num_gpus}",
        f"--dashboard-agent-listen-port={node.agent_port}",
        f"--temp-dir={node.temp_dir}",
        "--disable-usage-stats",
        *_node_args(node.node_ip, node.resources, node.labels),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_node_env(node.temp_dir, node.gcs_address, node.env))
    if proc.returncode != 0:
        raise ClusterError(
            f"could not start a Ray worker node joining {node.gcs_address} (exit {proc.returncode}):\n"
            f"{proc.stderr.strip()[-2000:]}\nCheck that the head runs there (`ray status --address "
            f"{node.gcs_address}`) and that port {node.agent_port} is free."
        )
    return node


def _jobs_api_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/jobs/", timeout=2.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop(head: LocalHead | WorkerNode = LocalHead(), timeout: float = 5.0, hard: bool = False) -> bool:
    """Stop the processes of this node only (its temp dir on the command line or in HEAD_ENV); True if any ran.
    `hard` SIGKILLs them all at once, as when the machine is lost: nothing gets to say goodbye to the head."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline"]) if p.pid != os.getpid() and _belongs_to(p, head)]
    # Ray renames its workers (`ray::IDLE`, `ray::DashboardAgent`, vLLM's engine core) and the rename can wipe
    # /proc/<pid>/environ, so take every descendant of the head's processes while the tree is still intact.
    procs = {p.pid: p for p in roots}
    for p in roots:
        try:
            procs.update({c.pid: c for c in p.children(recursive=True) if c.pid != os.getpid()})
        except psutil.NoSuchProcess:
            pass
    procs = list(procs.values())
    for p in procs:
        try:
            (p.kill if hard else p.terminate)()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    return bool(procs)


def _belongs_to(proc, head: LocalHead | WorkerNode) -> bool:
    import psutil

    if head.temp_dir in " ".join(proc.info.get("cmdline") or []):
        return True
    try:
        return proc.environ().get(HEAD_ENV) == head.temp_dir
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False

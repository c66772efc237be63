import os
import sys

import pytest

from cluster import local


@pytest.mark.cluster
def test_head_answers_jobs_api(ray_head):
    version = local.dashboard_version(ray_head.dashboard_url)
    assert version is not None and version["ray_version"]
    # starting again reuses the running head instead of failing on its ports
    assert local.start(ray_head) == ray_head


def test_nothing_answers_on_a_closed_port():
    from tests.conftest import free_port

    assert local.dashboard_version(f"http://127.0.0.1:{free_port()}", timeout=0.5) is None


def test_free_port_never_hands_out_a_port_twice(monkeypatch):
    """The kernel may offer a just-closed port again; a head given one port for two servers fails to start."""
    offered = iter([41001, 41002, 41001, 41002, 41003])

    class Socket:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            self.port = next(offered)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(local, "_handed_out", set())
    monkeypatch.setattr(local.socket, "socket", Socket)
    assert [local.free_port() for _ in range(3)] == [41001, 41002, 41003]


@pytest.mark.cluster
def test_down_stops_every_process_of_its_head_and_only_those(ray_head, tmp_path, monkeypatch):
    """A second head with a worker kept busy by a job: `stop` ends the whole tree, renamed workers included,
    and leaves the session's head running. The home directory holds the token a bare `ray.init()` leaves behind,
    which would turn on Ray's token authentication: the head still answers the Jobs API without one."""
    import subprocess

    import psutil

    from tests.conftest import free_port

    head = local.LocalHead(port=free_port(), dashboard_port=free_port(), client_port=free_port(),
                           agent_port=free_port(), temp_dir=f"/tmp/llmctl-t{os.getpid()}", num_cpus=2)  # fmt: skip
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("0123456789abcdef" * 4)
    monkeypatch.setenv("HOME", str(tmp_path))
    local.start(head)  # returns once the Jobs API answers a request without a token
    code = (
        f"import ray, time; ray.init(address='{head.gcs_address}'); a = ray.remote(lambda: time.sleep(600)).remote(); "
        "print('started', flush=True); time.sleep(600)"
    )
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert driver.stdout.readline().strip() == "started"
    tree = [p for p in psutil.process_iter(["cmdline"]) if local._belongs_to(p, head)]
    tree += [c for p in tree for c in p.children(recursive=True) if c.pid != driver.pid]
    assert any(p.name().startswith("ray::") or "ray::" in " ".join(p.cmdline()) for p in tree), "a renamed worker"

    assert local.stop(head)
    driver.kill()
    survivors = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, [" ".join(p.cmdline()) for p in survivors]
    assert local.dashboard_version(head.dashboard_url, timeout=0.5) is None
    assert local.dashboard_version(ray_head.dashboard_url) is not None, "the other head still runs"


@pytest.mark.cluster
def test_workers_run_at_the_drivers_priority(ray_session):
    """Ray starts workers at nice 15; on a node llmctl starts they run at nice 0, like the driver beside them."""
    import ray

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == 0


def test_heads_serve_http_through_haproxy_unless_told_otherwise(monkeypatch):
    for name in [*local.SERVE_ENV, local.HAPROXY_THREADS_ENV, local.WORKER_NICENESS_ENV]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(local.os, "cpu_count", lambda: 2)
    env = local._node_env("/tmp/x", "127.0.0.1:1")
    assert env[local.SERVE_INGRESS_ENV] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env[local.HAPROXY_THREADS_ENV] == "2", "no more HAProxy threads than cores"
    monkeypatch.setattr(local.os, "cpu_count", lambda: 64)
    assert local._node_env("/tmp/x", "127.0.0.1:1")[local.HAPROXY_THREADS_ENV] == "4", "Ray's default on big nodes"
    monkeypatch.setenv(local.SERVE_INGRESS_ENV, "0")  # a user who wants Serve's Python proxy keeps it
    assert local._node_env("/tmp/x", "127.0.0.1:1")[local.SERVE_INGRESS_ENV] == "0"
    monkeypatch.setenv(local.WORKER_NICENESS_ENV, "15")  # and one who wants Ray's worker priority back keeps it
    assert local._node_env("/tmp/x", "127.0.0.1:1")[local.WORKER_NICENESS_ENV] == "15"

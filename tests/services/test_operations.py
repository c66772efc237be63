"""Operating a deployed app under load: autoscaling, a killed replica, rescaling, a rolling model update, removal.

Tests run in file order on the shared app; each starts from one healthy replica (`settled_app`).
"""

from __future__ import annotations

import os
import signal
import time
from urllib.parse import urlparse

import httpx
import psutil
import pytest

from pipelines.errors import ClusterError
from services import lifecycle
from tests.services.conftest import (
    APP,
    MAX_TOKENS_CAP,
    model_replicas,
    replica_states,
    running_ids,
    serve_spec,
    stage_context,
    wait_for,
)
from tests.services.load import Load

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def greedy(app, prompt: str = "the cat runs") -> str:
    body = {"model": APP, "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    resp = httpx.post(f"{app.endpoint}/completions", json=body, headers={"Authorization": f"Bearer {app.api_key}"})
    resp.raise_for_status()
    return resp.json()["choices"][0]["text"]


def test_an_unchanged_app_that_answers_is_confirmed_not_redeployed(settled_app):
    """What a resubmit with every stage cached does: the same stage again finds its app serving the same record."""
    from services import stage

    before = running_ids()
    again = stage.run(settled_app.ctx)
    assert again["unchanged"] is True and again["deploy_s"] == 0.0
    assert again["endpoint"] == settled_app.endpoint and again["replicas"] == 1
    assert running_ids() == before


def test_autoscaling_goes_1_to_2_and_back_with_no_failed_requests(settled_app, record_property):
    # Four clients, twice the target of 2 ongoing requests per replica, asking for the longest answers the app
    # allows: the same pressure on the autoscaler with a quarter of the requests of 16-token answers, so the new
    # replica starts beside less proxy and client work (80 s instead of 120 s on 2 cores).
    heavy = Load(settled_app.base_url, APP, settled_app.api_key, max_requests=4000, max_seconds=360,
                 max_tokens=MAX_TOKENS_CAP)  # fmt: skip
    timeline = []
    try:
        heavy.concurrency(4)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and replica_states().get("RUNNING", 0) < 2:
            timeline.append(replica_states())
            time.sleep(1)
        assert replica_states().get("RUNNING", 0) == 2, f"never reached 2 replicas: {timeline[-5:]}"
    finally:
        heavy.stop()
    # A trickle below target while Serve removes the extra replica: scaling down must not fail requests either.
    light = Load(settled_app.base_url, APP, settled_app.api_key, max_requests=2000, max_seconds=240)
    light.concurrency(1)
    try:
        wait_for(lambda: replica_states() == {"RUNNING": 1}, 180, what="scale back to one replica")
    finally:
        light.stop()
    record_property("requests", heavy.sent + light.sent)
    assert heavy.failed == 0 and light.failed == 0, (heavy.outcomes, light.outcomes, heavy.errors[:3])
    assert heavy.sent > 20 and light.sent > 0


@pytest.fixture
def one_replica(settled_app):
    """The shared app pinned to one replica (a lightweight update), and back to its bounds afterwards: two clients
    at a target of two ongoing requests would otherwise start a second engine beside the one under test."""
    lifecycle.scale(APP, replicas=1)
    yield settled_app
    lifecycle.scale(APP, min_replicas=1, max_replicas=2)


def test_sigkill_of_the_replica_under_load_recovers(one_replica, record_property):
    (replica,) = model_replicas()
    victim = psutil.Process(replica["pid"])
    engine_procs = victim.children(recursive=True)
    load = Load(one_replica.base_url, APP, one_replica.api_key, max_requests=3000, max_seconds=400,
                max_tokens=MAX_TOKENS_CAP)  # long answers: fewer requests beside the replica that starts
    load.concurrency(2)
    try:
        wait_for(lambda: load.sent >= 5, 60, what="load to flow")
        failed_before_kill = load.failed
        os.kill(victim.pid, signal.SIGKILL)
        wait_for(lambda: running_ids() - {replica["replica_id"]}, 300, 2, what="a replacement replica")
        lifecycle.wait_running(APP, 120, log=lambda _: None)
        recovered_at, failed_at_recovery = load.sent, load.failed
        wait_for(lambda: load.sent >= recovered_at + 10, 60, what="requests after recovery")
    finally:
        load.stop()
        for proc in engine_procs:  # vLLM engine processes of the killed replica must not linger
            if proc.is_running():
                proc.kill()
    record_property("failed_requests", load.failed)
    print(f"\nSIGKILL under load: {load.sent} requests, {load.failed} failed ({dict(load.outcomes)})")
    assert failed_before_kill == 0
    assert load.failed == failed_at_recovery, "requests failed after the replacement was serving"
    assert httpx.get(f"{one_replica.base_url}/health").status_code == 200


def test_scale_changes_bounds_without_restarting_replicas(settled_app):
    before = running_ids()
    result = lifecycle.scale(APP, max_replicas=3, target_ongoing_requests=3)
    model = next(d for name, d in result["deployments"].items() if name.startswith("LLMServer:"))
    assert model["autoscaling"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 3.0}
    assert running_ids() == before  # a lightweight update: the vLLM replica was not reloaded
    assert lifecycle.load_record(APP).stage.autoscaling.max_replicas == 3
    lifecycle.scale(APP, max_replicas=2, target_ongoing_requests=2)


def test_status_and_scale_through_the_dashboard(ray_head, settled_app):
    status = lifecycle.status(APP, ray_head.dashboard_url)
    assert status["status"] == "RUNNING" and status["replicas"] == 1
    assert status["endpoint"] == settled_app.endpoint
    result = lifecycle.scale(APP, ray_head.dashboard_url, target_ongoing_requests=2.5)  # runs as a Ray job
    model = next(d for name, d in result["deployments"].items() if name.startswith("LLMServer:"))
    assert model["autoscaling"]["target_ongoing_requests"] == 2.5
    with pytest.raises(ClusterError, match="no Serve application named 'nope' \\(running: .*tiny"):
        lifecycle.status("nope", ray_head.dashboard_url)


def test_newer_model_under_the_same_name_rolls_without_failed_requests(settled_app, tmp_path, record_property):
    from services import stage
    from tests.conftest import free_port
    from tests.services.tiny_model import build_tiny_llama

    build_tiny_llama(str(tmp_path / "pretrain-v2" / "model"), layers=3)
    old_ids, old_text = running_ids(), greedy(settled_app)
    load = Load(settled_app.base_url, APP, settled_app.api_key, max_requests=3000, max_seconds=400,
                max_tokens=MAX_TOKENS_CAP)  # long answers: fewer requests beside the replica that starts
    load.concurrency(2)
    try:
        ctx = stage_context(str(tmp_path / "run"), serve_spec("pretrain", free_port()), str(tmp_path / "pretrain-v2"))
        metrics = stage.run(ctx)  # same app name, new model directory: a rolling update
        wait_for(lambda: load.sent >= 10, 60, what="requests after the update")
    finally:
        load.stop()
    record_property("requests", load.sent)
    assert load.failed == 0 and load.sent > 10, (load.outcomes, load.errors[:3])
    assert metrics["endpoint"] == settled_app.endpoint  # Serve kept its proxy port
    assert metrics["unchanged"] is False  # new model files: a new fingerprint, so a deploy
    assert running_ids().isdisjoint(old_ids)
    assert lifecycle.load_record(APP).model_source == str(tmp_path / "pretrain-v2" / "model")
    assert greedy(settled_app) != old_text  # the 3-layer model answers, not the old one


def test_down_removes_the_app_and_its_record(ray_head, served_app):
    """The fix the serve stage names for a port an llmctl app holds: `llmctl serve down NAME` frees it (Serve stops
    with its last app; the gateway alone is not kept). From this driver: Serve's client here must learn that Serve
    stopped."""
    from ray import serve

    from pipelines.spec.serve import GATEWAY_APP

    port = urlparse(served_app.endpoint).port
    assert lifecycle.down(APP) == {"name": APP, "deleted": True}
    assert APP not in serve.status().applications and GATEWAY_APP not in serve.status().applications
    wait_for(lambda: not lifecycle.port_in_use("127.0.0.1", port), 30, 0.5, what="Serve to free its port")
    with pytest.raises(ClusterError, match="no llmctl record for Serve application 'tiny'"):
        lifecycle.load_record(APP)
    with pytest.raises(ClusterError, match=r"no Serve application named 'tiny' \(running: none\)"):
        lifecycle.down(APP, ray_head.dashboard_url)  # as a Ray job, through the dashboard

"""What a serve stage refuses on a cluster that other pipelines share, checked against records in the real cluster KV
(no app is deployed: each refusal comes before anything is touched), and the exact message the user reads."""

from __future__ import annotations

import http.server
import json
import os
import threading

import pytest

from pipelines.errors import StageError
from pipelines.spec.serve import ServeStage
from services import lifecycle
from services.app import Adapter, AppRecord
from tests.services.conftest import stage_context, taken_port_message

STAGE = {"kind": "serve", "model": "pretrain", "autoscaling": {"target_ongoing_requests": 4}}


def record(name: str, pipeline: str, adapters: dict[str, Adapter] | None = None, **stage: object) -> AppRecord:
    spec = ServeStage.model_validate({**STAGE, **stage})
    return AppRecord(stage=spec, name=name, model_source=f"/models/{name}", pipeline=pipeline, adapters=adapters or {})


@pytest.fixture
def recorded(ray_session):
    """record(...) stored in the cluster's KV as a deployed app's record is; removed afterwards."""
    names = []

    def save(rec: AppRecord) -> AppRecord:
        lifecycle.save_record(rec)
        names.append(rec.name)
        return rec

    yield save
    for name in names:
        lifecycle.delete_record(name)


@pytest.mark.cluster
def test_a_model_id_another_app_serves_is_refused(recorded):
    recorded(record("chat", "team-a", {"support-bot": Adapter(path="/a", pipeline="team-a", rank=8)}))
    with pytest.raises(StageError) as info:
        lifecycle.check_owner(record("support-bot", "team-b"))
    assert str(info.value) == (
        "stages.serve.name: model id 'support-bot' is already served by the app 'chat' of pipeline 'team-a'; clients "
        "pick models by id, so two apps cannot share one. Rename this one (`--set serve.name=...`)."
    )


@pytest.mark.cluster
def test_another_apps_route_prefix_is_refused(recorded):
    recorded(record("chat", "team-a"))
    with pytest.raises(StageError) as info:
        lifecycle.check_owner(record("chat2", "team-b", http={"route_prefix": "/chat"}))
    assert str(info.value) == (
        "stages.serve.http.route_prefix: '/chat' is the route of the app 'chat' of pipeline 'team-a'. Set "
        "stages.serve.http.route_prefix to another prefix, or leave it unset (/<app name>)."
    )


@pytest.mark.cluster
def test_an_adapter_id_another_pipeline_owns_is_refused(recorded):
    recorded(record("chat", "team-a", {"bot": Adapter(path="/a/bot", pipeline="team-a", rank=8)}))
    mine = record("chat", "team-a", {"bot": Adapter(path="/b/bot", pipeline="team-b", rank=8)})
    with pytest.raises(StageError) as info:
        lifecycle.check_owner(mine, model="bot")
    assert str(info.value) == (
        "stages.serve.name: the LoRA adapter 'bot' of 'chat' on this cluster belongs to pipeline 'team-a' (it serves "
        "/a/bot), not to pipeline 'team-b'. Give this adapter another name (`--set serve.name=...`), or remove that "
        "one first with `llmctl serve down bot`."
    )


def adapter_dir(tmp_path, base: str, rank: int) -> str:
    path = tmp_path / "adapter"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": rank}))
    return str(path)


def base_dir(tmp_path) -> str:
    path = tmp_path / "base"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return str(path)


@pytest.mark.cluster
def test_adapter_refusals_name_the_field_and_the_fix(ray_session, recorded, tmp_path):
    from services.stage import adapter_record

    ctx = stage_context(str(tmp_path), {**STAGE, "name": "bot"}, str(tmp_path), pipeline="team-b")
    gone = adapter_dir(tmp_path, "/nowhere/base", 8)
    with pytest.raises(StageError) as info:
        adapter_record(ctx, gone)
    assert str(info.value) == (
        f"stages.serve.model: the LoRA adapter in {gone} names its base model as '/nowhere/base', which is not a "
        "Hugging Face model directory here. Serve it where its base is reachable, or fix base_model_name_or_path in "
        f"{gone}/adapter_config.json."
    )
    os.remove(os.path.join(gone, "adapter_config.json"))
    os.rmdir(gone)

    base = base_dir(tmp_path)
    host = recorded(record("chat", "team-a", lora={"max_rank": 8}).model_copy(update={"model_source": base}))
    too_big = adapter_dir(tmp_path, base, 32)
    with pytest.raises(StageError) as info:
        adapter_record(ctx, too_big)
    assert str(info.value) == (
        "stages.serve.model: the adapter's rank 32 is above the largest the app 'chat' accepts (lora.max_rank 8). "
        "Train it with a lower lora.rank, or serve its base with a larger lora.max_rank."
    )
    named_like_base = stage_context(str(tmp_path), {**STAGE, "name": host.name}, str(tmp_path), pipeline="team-b")
    with pytest.raises(StageError) as info:
        adapter_record(named_like_base, too_big)
    assert str(info.value) == (
        "stages.serve.name: 'chat' is the model id of the app 'chat' that serves this adapter's base; name the "
        "adapter otherwise (`--set serve.name=...`)."
    )


def test_a_port_several_llmctl_models_hold_is_refused_naming_them():
    """Another cluster's gateway answers /health with every model it routes (services.gateway)."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            body = json.dumps({"status": "ok", "gateway": True, "models": ["chat", "bot"]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        with pytest.raises(StageError) as info:
            lifecycle.check_port("serve", "127.0.0.1", port)
    finally:
        server.shutdown()
        server.server_close()
    holder = "the llmctl apps 'chat', 'bot' (the Serve proxy of another Ray cluster on this machine)"
    assert str(info.value) == taken_port_message(port, holder, "remove those apps with `llmctl serve down NAME` on "
                                                 "their cluster")  # fmt: skip

"""The model gateway's routing on its own: a routing table, and stand-in apps reached over httpx's ASGI transport
(the real forwarding through Serve's proxy is tested in test_many_apps)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from services import gateway
from services.auth import digest
from services.lifecycle import ModelRoute

TABLE = {
    "open": ModelRoute("open", "http://proxy/open/v1", ()),
    "keyed": ModelRoute("keyed", "http://proxy/keyed/v1", (digest("k1"),)),
}


async def upstream(request: Request):
    """A stand-in app: echoes what reached it; streams three events when asked to."""
    body = await request.json()
    seen = {"path": request.url.path, "model": body.get("model"), "auth": request.headers.get("authorization")}
    if body.get("stream"):
        async def events():
            for i in range(3):
                yield f"data: {json.dumps({'i': i, **seen})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    status = 401 if seen["path"].startswith("/keyed/") and seen["auth"] != "Bearer k1" else 200
    return JSONResponse(seen, status_code=status)


APPS = Starlette(routes=[Route("/{app}/v1/{rest:path}", upstream, methods=["POST"])])


@pytest.fixture
def call(monkeypatch):
    """call(method, path, table=TABLE, **httpx kwargs): one request to the gateway over the routing table `table`
    (what lifecycle.routes reads from the cluster's KV), its apps the stand-ins above."""

    def request(method: str, path: str, table=TABLE, **kwargs) -> httpx.Response:
        monkeypatch.setattr(gateway, "routes", lambda: table)

        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=APPS)) as apps:
                app = gateway.build(apps)
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
                    response = await client.request(method, path, **kwargs)
                    await response.aread()
                    return response

        return asyncio.run(go())

    return request


def test_models_lists_what_the_callers_key_opens(call):
    assert [m["id"] for m in call("GET", "/v1/models").json()["data"]] == ["open"]
    listed = call("GET", "/v1/models", headers={"Authorization": "Bearer k1"}).json()["data"]
    assert [(m["id"], m["root"], m["endpoint"]) for m in listed] == [
        ("keyed", "keyed", "http://proxy/keyed/v1"), ("open", "open", "http://proxy/open/v1")]  # fmt: skip
    only_keyed = {"keyed": TABLE["keyed"]}
    refused = call("GET", "/v1/models", table=only_keyed, headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401 and refused.json()["error"]["message"] == "Invalid API key."
    assert call("GET", "/v1/models", table={}).json() == {"object": "list", "data": []}


def test_requests_reach_the_app_of_their_model_with_the_callers_key(call):
    answer = call("POST", "/v1/chat/completions", json={"model": "keyed", "messages": []},
                  headers={"Authorization": "Bearer k1"})  # fmt: skip
    assert answer.status_code == 200
    assert answer.json() == {"path": "/keyed/v1/chat/completions", "model": "keyed", "auth": "Bearer k1"}
    assert call("POST", "/v1/completions", json={"model": "open"}).json()["path"] == "/open/v1/completions"
    # The app's own answer passes through unchanged, its refusals included.
    assert call("POST", "/v1/completions", json={"model": "keyed"}).status_code == 401


def test_streams_pass_through_in_order(call):
    answer = call("POST", "/v1/chat/completions", json={"model": "open", "stream": True})
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in answer.text.splitlines() if line.startswith("data: ")]
    assert [json.loads(e)["i"] for e in events[:-1]] == [0, 1, 2] and events[-1] == "[DONE]"


def test_an_unknown_or_missing_model_names_what_is_served(call):
    unknown = call("POST", "/v1/chat/completions", json={"model": "nope"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "The model 'nope' does not exist on this cluster. It serves: open."
    missing = call("POST", "/v1/completions", content=b"not json")
    assert missing.status_code == 400 and "The request names no model" in missing.json()["error"]["message"]


def test_health_and_chat_page_answer_without_a_key(call):
    assert call("GET", "/health").json() == {"status": "ok", "gateway": True, "models": ["keyed", "open"]}
    page = call("GET", "/chat")
    assert page.status_code == 200 and "llmctl chat" in page.text


@pytest.mark.cluster
def test_an_app_from_a_serve_config_is_routed_and_owned(ray_session, monkeypatch):
    """KubeRay's RayService builds apps from serveConfigV2 (services.builder), not from a pipeline's serve stage:
    the builder records the app where the gateway reads its routes, and a pipeline cannot take its name over."""
    from pipelines.errors import StageError
    from services import builder, lifecycle

    monkeypatch.setattr(builder, "build_app", lambda record: record)  # the record, not a vLLM app
    stage = {"kind": "serve", "model": "s3://b/m", "autoscaling": {"target_ongoing_requests": 4},
             "http": {"port": 8123}}  # fmt: skip
    record = builder.app_builder({"name": "from-config", "model_source": "s3://b/m", "stage": stage})
    try:
        route = lifecycle.routes()["from-config"]
        assert route.endpoint == "http://127.0.0.1:8123/from-config/v1", "through the Serve proxy of the gateway's node"
        theirs = record.model_copy(update={"pipeline": "mine"})
        with pytest.raises(StageError) as refused:
            lifecycle.check_owner(theirs)
        owner = "the Serve application 'from-config' on this cluster belongs to a Serve config (a KubeRay RayService"
        assert owner in str(refused.value)
        assert lifecycle.confirm_unchanged(record) is None, "a config app is never taken as a finished stage deploy"
    finally:
        lifecycle.delete_record("from-config")
    assert "from-config" not in lifecycle.routes()
    with pytest.raises(ValueError, match="the llmctl gateway takes no args"):
        builder.gateway_builder({"name": "x"})
    assert type(builder.gateway_builder({})).__name__ == "Application"

"""API keys and limits (services.auth), and the ASGI guard in front of the ingress, without a cluster."""

from __future__ import annotations

import json

import pytest

from pipelines.errors import StageError
from services.auth import Guard, Rejection, digest, key_digests

KEY = "sk-test-abc"


def test_digests_come_from_env_vars_and_config():
    env = {"K1": f"{KEY}, second-key ", "K2": "third"}
    digests = key_digests(["K1", "K2"], ["sha256:" + "0" * 64], env)
    assert set(digests) == {digest(KEY), digest("second-key"), digest("third"), "sha256:" + "0" * 64}
    assert KEY not in "".join(digests)


@pytest.mark.parametrize("env", [{}, {"K1": " , "}])
def test_missing_key_env_var_is_a_clear_error(env):
    with pytest.raises(StageError, match="environment variable K1 is not set \\(or empty\\) in the shell that ran"):
        key_digests(["K1"], [], env)


def test_digests_sent_by_the_submitting_shell_stand_in_for_the_key():
    from cluster.runs import key_digest_env
    from pipelines.plan import Plan, PlannedStage

    serve = PlannedStage("serve", "serve", "u", "k", {}, {"api_key_env": ["K1"]}, always_run=True)
    p = Plan("p", "r", "s", "v", {}, [serve])
    sent = key_digest_env(p, {"K1": KEY, "OTHER": "x"})
    assert KEY not in str(sent), "only digests travel with the job"
    assert key_digests(["K1"], [], sent) == [digest(KEY)], "the job accepts the key set where llmctl submit ran"
    assert key_digest_env(p, {}) == {}


def test_authorize():
    guard = Guard(key_digests=(digest(KEY),))
    assert guard.authorize("/v1/models", f"Bearer {KEY}") is None
    assert guard.authorize("/v1/models", f"bearer  {KEY} ") is None
    assert guard.authorize("/health", None) is None  # open for load balancers
    for header in (None, "", "Bearer", f"Basic {KEY}", "Bearer nope"):
        rejection = guard.authorize("/v1/chat/completions", header)
        assert rejection is not None and rejection.status == 401 and rejection.type == "authentication_error"
    assert Guard().authorize("/v1/models", None) is None  # no keys configured: no auth


def test_size_and_max_tokens_limits():
    guard = Guard(max_request_bytes=100, max_tokens=64)
    assert guard.check_size(100) is None and guard.check_size(101).status == 413
    assert guard.check_max_tokens(64) is None
    rejection = guard.check_max_tokens(65, "max_completion_tokens")
    assert rejection == Rejection(
        400, "max_completion_tokens is 65; this endpoint allows at most 64.", param="max_completion_tokens"
    )
    assert Guard(max_tokens=None).check_max_tokens(10**9) is None


# ---- the ASGI middleware, on a stand-in app -------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded():
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from services import ingress

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    app = Starlette(routes=[Route("/v1/echo", echo, methods=["GET", "POST"]), Route("/health", echo)])
    guard = Guard(key_digests=(digest(KEY),), max_request_bytes=1000)
    app.add_middleware(ingress.GuardMiddleware, guard=lambda: guard)
    return TestClient(app)


def test_guard_rejects_before_the_app(guarded):
    resp = guarded.post("/v1/echo", content=b"x" * 10)
    assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    assert resp.json()["error"] == {
        "message": "Missing API key: send `Authorization: Bearer <key>`.",
        "type": "authentication_error",
        "param": None,
        "code": 401,
    }
    assert guarded.get("/health").status_code == 200


def test_guard_passes_the_buffered_body_on(guarded):
    resp = guarded.post("/v1/echo", content=b"x" * 1000, headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 200 and resp.json() == {"bytes": 1000}


def test_guard_limits_declared_and_chunked_bodies(guarded):
    headers = {"Authorization": f"Bearer {KEY}"}
    assert guarded.post("/v1/echo", content=b"x" * 1001, headers=headers).status_code == 413

    def chunks():  # no Content-Length: the limit must hold while streaming in
        for _ in range(5):
            yield b"x" * 300

    resp = guarded.post("/v1/echo", content=chunks(), headers=headers)
    assert resp.status_code == 413 and "limit is 1000" in resp.json()["error"]["message"]


def test_max_tokens_above_the_cap_is_refused_and_a_missing_one_left_to_the_engine():
    from services.ingress import check_tokens

    guard = Guard(max_tokens=64)
    chat, completions = "/v1/chat/completions", "/v1/completions"
    # No length: the engine gives the rest of the context, at most the cap (its ceiling), as on `vllm serve`.
    assert check_tokens(guard, chat, b'{"messages": []}') is None
    assert check_tokens(Guard(max_tokens=8), completions, b'{"prompt": "x"}') is None
    # max_completion_tokens wins over max_tokens, as in OpenAI's API, and is the one checked.
    over = check_tokens(guard, chat, b'{"max_completion_tokens": 65, "max_tokens": 8}')
    assert over == Rejection(400, "max_completion_tokens is 65; this endpoint allows at most 64.",
                             param="max_completion_tokens")  # fmt: skip
    assert check_tokens(guard, completions, b'{"prompt": "x", "max_tokens": 65}').param == "max_tokens"
    assert check_tokens(guard, completions, b'{"prompt": "x", "max_tokens": 64}') is None
    # Not ours to judge: the engine's validation answers these with its own 400.
    for body in (b'{"prompt": ', b'[1, 2]', b'{"max_tokens": "many"}', b'{"max_tokens": true}'):
        assert check_tokens(guard, completions, body) is None
    assert check_tokens(guard, "/v1/models", b'{"max_tokens": 65}') is None
    assert check_tokens(Guard(), chat, b'{"max_tokens": 65}') is None


def test_the_cap_is_the_engines_ceiling_for_requests_without_a_length():
    from pipelines.spec.serve import ServeStage
    from services.app import engine_kwargs

    def stage(**fields) -> ServeStage:
        return ServeStage.model_validate({"kind": "serve", "model": "m", "autoscaling": {"target_ongoing_requests": 2},
                                          **fields})  # fmt: skip

    assert engine_kwargs(stage())["override_generation_config"] == {"max_new_tokens": 1024}
    assert "override_generation_config" not in engine_kwargs(stage(limits={"max_tokens": None}))
    own = stage(limits={"max_tokens": 64}, engine={"kwargs": {"override_generation_config": {"temperature": 0.5}}})
    assert engine_kwargs(own)["override_generation_config"] == {"temperature": 0.5, "max_new_tokens": 64}


def test_guard_passes_a_request_without_a_length_on_unchanged():
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from services import ingress

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"json": json.loads(await request.body())})

    app = Starlette(routes=[Route("/v1/chat/completions", echo, methods=["POST"])])
    guard = Guard(max_tokens=32)
    app.add_middleware(ingress.GuardMiddleware, guard=lambda: guard)
    client = TestClient(app)
    assert client.post("/v1/chat/completions", json={"messages": []}).json() == {"json": {"messages": []}}
    refused = client.post("/v1/chat/completions", json={"messages": [], "max_tokens": 33})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"

"""The OpenAI protocol of a deployed app, through the official openai client and raw HTTP."""

from __future__ import annotations

import httpx
import openai
import pytest

from pipelines.errors import StageError
from services.client import usage
from tests.services.conftest import (
    API_KEY_ENV,
    APP,
    MAX_MODEL_LEN,
    MAX_REQUEST_BYTES,
    MAX_TOKENS_CAP,
    printed_curl,
    requests_served,
    run_in_shell,
    taken_port_message,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def client(served_app) -> openai.OpenAI:
    return openai.OpenAI(base_url=served_app.endpoint, api_key=served_app.api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(served_app):
    with httpx.Client(base_url=served_app.base_url, timeout=120) as c:
        yield c


def auth(app) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.api_key}"}


def test_stage_reports_the_endpoint(served_app):
    m = served_app.metrics
    assert m["app"] == "tiny" and m["replicas"] == 1 and m["auth"] is True
    assert m["endpoint"].startswith("http://127.0.0.1:") and m["endpoint"].endswith("/v1")
    assert m["model_source"].endswith("/model")
    assert m["probe"] == "skipped (API keys)", "the job holds no key to send, so it must not try (and fail)"


def test_models_lists_the_app(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_completion(client):
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello there"}], max_tokens=8
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 0


def test_chat_completion_streams(client):
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, stream=True
    )
    chunks = list(stream)
    assert len(chunks) >= 2  # several SSE events, not one buffered body
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_completion_and_stream(client):
    reply = client.completions.create(model="tiny", prompt="the cat", max_tokens=6, extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 6
    events = list(client.completions.create(model="tiny", prompt="the cat", max_tokens=6, stream=True))
    assert len(events) >= 2 and events[-1].choices[0].finish_reason in ("length", "stop")


def test_sse_wire_format(http, served_app):
    body = {"model": "tiny", "prompt": "a dog", "max_tokens": 4, "stream": True}
    with http.stream("POST", "/v1/completions", json=body, headers=auth(served_app)) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_engine_metrics_at_the_endpoint_behind_the_key(http, served_app, client):
    client.completions.create(model="tiny", prompt="the cat", max_tokens=4)
    assert http.get("/metrics").status_code == 401
    text = http.get("/metrics", headers=auth(served_app)).text
    assert requests_served(text, "vllm:request_success_total", "tiny") >= 1


def test_missing_max_tokens_gets_the_rest_of_the_context_at_most_the_cap(client):
    # As on `vllm serve`: a chat request without max_tokens may fill the context; the cap is only its ceiling.
    messages = [{"role": "user", "content": "the"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == MAX_TOKENS_CAP
    # A prompt that leaves less than the cap: the answer fills what is left (a cap sent as max_tokens overflowed).
    messages = [{"role": "user", "content": "the " * 220}]
    prompt = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1).usage.prompt_tokens
    assert MAX_MODEL_LEN - MAX_TOKENS_CAP < prompt < MAX_MODEL_LEN, "the prompt must leave less than the cap"
    reply = client.chat.completions.create(model="tiny", messages=messages, extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == MAX_MODEL_LEN - prompt and reply.choices[0].finish_reason == "length"


def test_the_printed_curl_line_answers(served_app, tmp_path):
    """The curl line `llmctl submit` prints for an app with keys, run as it is by bash with the key exported."""
    command = printed_curl(usage(served_app.endpoint, APP, api_key_env=API_KEY_ENV))
    status, body = run_in_shell(command, str(tmp_path), env={API_KEY_ENV: served_app.api_key})
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]


def test_health_is_open_and_reflects_the_engine(http):
    resp = http.get("/health")
    assert resp.status_code == 200 and resp.json() == {"status": "ok", "models": ["tiny"]}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic abc"}])
def test_requests_without_a_valid_key_get_401(http, headers):
    resp = http.post("/v1/chat/completions", json={"model": "tiny", "messages": []}, headers=headers)
    assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    assert resp.json()["error"]["type"] == "authentication_error"
    assert http.get("/v1/models", headers=headers).status_code == 401


def test_openai_client_without_key_is_refused(served_app):
    anonymous = openai.OpenAI(base_url=served_app.endpoint, api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()


def test_valid_key_gets_200(http, served_app):
    assert http.get("/v1/models", headers=auth(served_app)).status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"model": "tiny", "prompt": ', 400),  # truncated JSON
        (b'{"model": "tiny"}', 400),  # no messages
        (b'{"model": "tiny", "messages": "hello"}', 400),  # wrong type
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}', 400),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', 400),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404),
    ],
)
def test_malformed_requests_get_4xx(http, served_app, body, status):
    headers = {**auth(served_app), "Content-Type": "application/json"}
    resp = http.post("/v1/chat/completions", content=body, headers=headers)
    assert resp.status_code == status, resp.text
    assert "error" in resp.json()


def test_max_tokens_above_cap_names_the_limit(http, served_app):
    body = {"model": "tiny", "prompt": "x", "max_tokens": MAX_TOKENS_CAP + 1}
    resp = http.post("/v1/completions", json=body, headers=auth(served_app))
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == f"max_tokens is {MAX_TOKENS_CAP + 1}; this endpoint allows at most 64."


def test_prompt_longer_than_the_context_is_4xx(http, served_app):
    body = {"model": "tiny", "prompt": "the cat " * 400, "max_tokens": 4}
    resp = http.post("/v1/completions", json=body, headers=auth(served_app))
    assert 400 <= resp.status_code < 500, resp.text


def test_oversized_body_gets_413_before_parsing(http, served_app):
    big = b'{"model": "tiny", "prompt": "' + b"a" * MAX_REQUEST_BYTES + b'"}'
    resp = http.post("/v1/completions", content=big, headers={**auth(served_app), "Content-Type": "application/json"})
    assert resp.status_code == 413
    # Without a key the 401 comes first: nothing about the body is looked at.
    assert http.post("/v1/completions", content=big).status_code == 401


def test_a_port_an_llmctl_app_holds_is_refused_naming_the_app(served_app):
    """What a serve stage on another cluster (one whose Serve is not running yet) says about this app's port."""
    from urllib.parse import urlparse

    from services import lifecycle

    port = urlparse(served_app.endpoint).port
    with pytest.raises(StageError) as info:
        lifecycle.check_port("serve", "127.0.0.1", port)
    holder = "the llmctl app 'tiny' (the Serve proxy of another Ray cluster on this machine)"
    fix = "remove that app with `llmctl serve down tiny` on its cluster"
    assert str(info.value) == taken_port_message(port, holder, fix)

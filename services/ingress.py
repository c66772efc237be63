"""The OpenAI ingress of an llmctl app: Ray Serve LLM's `OpenAiIngress` plus auth, request limits, /health and a
chat page at / and /chat (services.chat_page).

Checks run in an ASGI middleware that sits outside every other layer, so a request without a valid key or with an
oversized body is answered (401 / 413) before its body is parsed and long before it reaches a vLLM replica. The
max_tokens cap needs the parsed body, so it lives in the chat/completions endpoints, still before the engine.
Imports Ray Serve LLM: load this module only where an app is built or runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from ray.llm._internal.serve.core.ingress.ingress import init as init_openai_fastapi
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response

from services import chat_page
from services.auth import Guard, Rejection

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HEALTH_TIMEOUT_S = 10.0

# The guard of this replica. Each Serve replica is its own process with exactly one ingress instance, and the
# FastAPI app (with this middleware) is frozen at build time, so the constructor hands the guard over here.
_guard: Guard | None = None


def _route_path(scope: Scope) -> str:
    path, root = scope.get("path", "/"), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


async def _reject(send: Send, rejection: Rejection) -> None:
    body = json.dumps(rejection.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if rejection.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": rejection.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, guard: Guard) -> tuple[bytes, Rejection | None]:
    """The whole request body, or a 413 as soon as it grows past the limit (chunked uploads included)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), None
        chunk = message.get("body", b"")
        size += len(chunk)
        rejection = guard.check_size(size)
        if rejection:
            return b"", rejection
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that yields the buffered body once, then the client's own messages (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _is_page(scope: Scope) -> bool:
    """The chat page loads without a key (it holds none); its API calls carry the key the user types in."""
    return scope.get("method") == "GET" and _route_path(scope) in chat_page.PATHS


class GuardMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = _guard
        if scope["type"] != "http" or guard is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rejection = None if _is_page(scope) else guard.authorize(_route_path(scope), headers.get("authorization"))
        if rejection is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            declared = headers.get("content-length", "")
            rejection = guard.check_size(int(declared)) if declared.isdigit() else None
            if rejection is None:
                body, rejection = await _read_body(receive, guard)
                receive = _replay(body, receive)
        if rejection is not None:
            await _reject(send, rejection)
            return
        await self.app(scope, receive, send)


def _cap_tokens(guard: Guard, body: Any, fields: tuple[str, ...]) -> Any:
    """The body with max_tokens resolved against the cap, or a Rejection."""
    param = next((f for f in fields if getattr(body, f, None) is not None), fields[-1])
    resolved = guard.resolve_max_tokens(getattr(body, param, None), param)
    if isinstance(resolved, Rejection):
        return resolved
    return body.model_copy(update={param: resolved})


async def _awaited(response: Any) -> Any:
    return await response


class LlmctlIngress(OpenAiIngress):
    """OpenAiIngress with the guard's max_tokens cap and an engine-backed /health."""

    def __init__(self, llm_deployments: dict, model_cards: dict, *, guard: Guard, **kwargs: Any) -> None:
        global _guard
        super().__init__(llm_deployments, model_cards, **kwargs)
        _guard = guard
        self._guard = guard

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        capped = _cap_tokens(self._guard, body, ("max_completion_tokens", "max_tokens"))
        if isinstance(capped, Rejection):
            return JSONResponse(capped.body(), status_code=capped.status)
        return await super().chat(capped, request)

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        capped = _cap_tokens(self._guard, body, ("max_tokens",))
        if isinstance(capped, Rejection):
            return JSONResponse(capped.body(), status_code=capped.status)
        return await super().completions(capped, request)

    async def health(self) -> Response:
        """200 when every model deployment answers its engine health check, 503 otherwise."""
        try:
            for handle in self._default_serve_handles.values():
                await asyncio.wait_for(_awaited(handle.check_health.remote()), HEALTH_TIMEOUT_S)
        except Exception as exc:  # a dead engine raises its own error types; all mean "not healthy"
            return JSONResponse({"status": "unhealthy", "error": str(exc)[:500]}, status_code=503)
        return JSONResponse({"status": "ok", "models": sorted(self._model_cards)})

    async def chat_page(self, request: Request) -> HTMLResponse:
        return HTMLResponse(chat_page.render(request.scope.get("root_path", "")))


def _get_all(app: FastAPI, paths: tuple[str, ...]) -> Callable:
    """One handler on several GET paths (FastAPI's route decorators return the function unchanged, so they stack)."""

    def decorate(handler: Callable) -> Callable:
        for path in paths:
            handler = app.get(path, include_in_schema=False)(handler)
        return handler

    return decorate


ENDPOINTS: dict[str, Callable[[FastAPI], Callable]] = {
    "models": lambda app: app.get("/v1/models"),
    "model_data": lambda app: app.get("/v1/models/{model:path}"),
    "completions": lambda app: app.post("/v1/completions"),
    "chat": lambda app: app.post("/v1/chat/completions"),
    "health": lambda app: app.get("/health"),
    "chat_page": lambda app: _get_all(app, chat_page.PATHS),
}


async def _openai_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI answers HTTPException (an unknown model's 404) as {"detail": …}; OpenAI clients expect {"error": …}."""
    kind = {404: "not_found_error", 401: "authentication_error"}.get(exc.status_code, "invalid_request_error")
    rejection = Rejection(exc.status_code, str(exc.detail), kind)
    return JSONResponse(rejection.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))


def ingress_class() -> type:
    """The Serve ingress class: Serve LLM's FastAPI app (error mapping, CORS, request ids) wrapped by the guard."""
    app = init_openai_fastapi()
    app.add_exception_handler(StarletteHTTPException, _openai_http_error)
    app.add_middleware(GuardMiddleware)  # added last, so it runs first
    return make_fastapi_ingress(LlmctlIngress, endpoint_map=ENDPOINTS, app=app)

"""What llmctl adds to vLLM's own OpenAI app inside a model replica: auth, request limits, /health and the chat page.

The replica serves HTTP itself (services.server), with vLLM's FastAPI app, the same code `vllm serve` runs. In front
of it sits `GuardMiddleware`, a pure ASGI middleware outside every other layer, so a request without a valid key
(401) or with an oversized body (413) is answered before its body is parsed and before it reaches the engine. A
max_tokens above the cap is refused from the buffered JSON body of the chat and completion routes, still before the
engine; the body itself always passes on unchanged.

Pure ASGI and Starlette (no Ray, no vLLM import), so it is unit-tested on stand-in apps.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse

from services import chat_page
from services.auth import Guard, Rejection

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The request fields that carry the output length, per route, in the order they take precedence (in chat,
# max_completion_tokens replaces max_tokens, as in OpenAI's API).
TOKEN_FIELDS: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("max_completion_tokens", "max_tokens"),
    "/v1/completions": ("max_tokens",),
}


def route_path(scope: Scope) -> str:
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


def check_tokens(guard: Guard, path: str, body: bytes) -> Rejection | None:
    """A 400 when the request asks for more output tokens than the cap; None lets it pass unchanged.

    A request without a length is the engine's to size, as on `vllm serve`: the rest of the context, at most the cap
    (the engine's ceiling, services.app.output_ceiling). Bodies that are not a JSON object, or lengths that are not
    integers, pass too: the engine's own request validation answers those with its 400."""
    if path not in TOKEN_FIELDS or guard.max_tokens is None:
        return None
    try:
        request = json.loads(body)
    except ValueError:
        return None
    if not isinstance(request, dict):
        return None
    param = next((f for f in TOKEN_FIELDS[path] if request.get(f) is not None), None)
    requested = request.get(param) if param else None
    if not isinstance(requested, int) or isinstance(requested, bool):
        return None
    return guard.check_max_tokens(requested, param)


def _is_page(scope: Scope) -> bool:
    """The chat page loads without a key (it holds none); its API calls carry the key the user types in."""
    return scope.get("method") == "GET" and route_path(scope) in chat_page.PATHS


class GuardMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched.

    `guard` returns the guard in force: the replica swaps it when the app's keys or limits change (a Serve
    user_config update), without a restart."""

    def __init__(self, app: Callable, guard: Callable[[], Guard | None]) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self.guard()
        if scope["type"] != "http" or guard is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rejection = None if _is_page(scope) else guard.authorize(route_path(scope), headers.get("authorization"))
        if rejection is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            declared = headers.get("content-length", "")
            rejection = guard.check_size(int(declared)) if declared.isdigit() else None
            if rejection is None:
                body, rejection = await _read_body(receive, guard)
                rejection = rejection or check_tokens(guard, route_path(scope), body)
                receive = _replay(body, receive)
        if rejection is not None:
            await _reject(send, rejection)
            return
        await self.app(scope, receive, send)


def install(app: Any, guard: Callable[[], Guard | None], model: str, check_health: Callable[[], Awaitable]) -> None:
    """Add llmctl's routes and guard to vLLM's FastAPI app (whose middleware stack is already built).

    /health replaces vLLM's empty 200 with one that names the model and answers 503 when the engine is not
    healthy; the chat page answers at chat_page.PATHS."""
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/health"]

    async def health() -> JSONResponse:
        try:
            await check_health()
        except Exception as exc:  # a dead engine raises its own error types; all mean "not healthy"
            return JSONResponse({"status": "unhealthy", "error": str(exc)[:500]}, status_code=503)
        return JSONResponse({"status": "ok", "models": [model]})

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(chat_page.render(request.scope.get("root_path", "")))

    app.add_api_route("/health", health, methods=["GET"], include_in_schema=False)
    for path in chat_page.PATHS:
        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)
    app.middleware_stack = None  # vLLM built the stack eagerly; Starlette rebuilds it with ours outermost
    app.add_middleware(GuardMiddleware, guard=guard)

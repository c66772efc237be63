"""What llmctl adds to vLLM's own OpenAI app inside a model replica: auth, request limits, /health and the chat page.

The replica serves HTTP itself (services.server), with vLLM's FastAPI app, the same code `vllm serve` runs. In front
of it sits `GuardMiddleware`, a pure ASGI middleware outside every other layer, so a request without a valid key
(401) or with an oversized body (413) is answered before its body is parsed and before it reaches the engine. The
max_tokens cap is applied to the buffered JSON body of the chat and completion routes, still before the engine.

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

# The request fields that carry the output length, per route, in the order they take precedence, and the default
# OpenAI's API applies when none is sent (completions: 16; chat: none, so the cap applies).
TOKEN_FIELDS: dict[str, tuple[tuple[str, ...], int | None]] = {
    "/v1/chat/completions": (("max_completion_tokens", "max_tokens"), None),
    "/v1/completions": (("max_tokens",), 16),
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


def cap_tokens(guard: Guard, path: str, body: bytes) -> bytes | Rejection:
    """The body with its output length resolved against the cap (unchanged when nothing changes), or a 400.

    Bodies that are not a JSON object, or lengths that are not integers, pass unchanged: the engine's own request
    validation answers those with its 400."""
    if path not in TOKEN_FIELDS or guard.max_tokens is None:
        return body
    try:
        request = json.loads(body)
    except ValueError:
        return body
    if not isinstance(request, dict):
        return body
    fields, default = TOKEN_FIELDS[path]
    param = next((f for f in fields if request.get(f) is not None), fields[-1])
    requested = request.get(param, default)
    if requested is not None and (not isinstance(requested, int) or isinstance(requested, bool)):
        return body
    resolved = guard.resolve_max_tokens(requested, param)
    if isinstance(resolved, Rejection):
        return resolved
    if resolved == request.get(param, default):
        return body
    return json.dumps({**request, param: resolved}).encode()


def _with_length(scope: Scope, size: int) -> Scope:
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(size).encode())]}


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
                capped = cap_tokens(guard, route_path(scope), body) if rejection is None else body
                if isinstance(capped, Rejection):
                    rejection = capped
                elif capped is not body:
                    body, scope = capped, _with_length(scope, len(capped))
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

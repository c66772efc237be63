"""The cluster's model gateway: one OpenAI base URL (`http://host:port/v1`) for every model llmctl serves there.

Each pipeline's app answers at its own route prefix (`http://host:port/<app>/v1`) and is deployed, scaled, rolled
and removed without touching another app; its replicas are its HTTP servers (services.server). The gateway is one
more small Serve app, at `/`:
- `GET /v1/models` lists the models of every llmctl app the caller's key may use (apps without keys: everyone);
- `POST /v1/chat/completions` and `/v1/completions` go to the app that serves the request's `model`, and the answer
  streams back as the app writes it. The app's own ingress checks the key and the limits, so an answer through the
  gateway is the answer the app gives;
- `/` and `/chat` serve the chat page, which offers every model.

The routing table is what the serve stages record in the cluster's KV (services.lifecycle.routes), read on each
request, so an app deployed or removed a moment ago is routed to at once without redeploying the gateway. The
gateway adds one local HTTP hop; a client that wants none uses its app's own URL, which `llmctl submit` prints.
Imports Ray Serve: load only where the gateway is built or runs.
"""

from __future__ import annotations

import json
from typing import Any

from ray import serve
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services import chat_page
from services.auth import Guard, Rejection

FORWARDED = ("/v1/chat/completions", "/v1/completions")
# Hop-by-hop headers and those httpx sets itself are not copied between the client's and the app's requests.
DROPPED = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer",
           "proxy-authorization", "proxy-authenticate", "accept-encoding"}  # fmt: skip


def routes() -> dict[str, Any]:
    from services import lifecycle

    return lifecycle.routes()


def error(rejection: Rejection) -> JSONResponse:
    return JSONResponse(rejection.body(), status_code=rejection.status)


def visible(table: dict[str, Any], authorization: str | None) -> list[str]:
    """The model ids the caller may use: those of apps without keys, and those whose keys include the caller's."""
    return sorted(m for m, route in table.items() if Guard(route.key_digests).authorize("/v1/models", authorization)
                  is None)  # fmt: skip


def model_list(ids: list[str], table: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI list format, with the app that serves each model and its own base URL."""
    data = [{"id": m, "object": "model", "owned_by": "llmctl", "root": table[m].app,
             "endpoint": table[m].endpoint} for m in ids]  # fmt: skip
    return {"object": "list", "data": data}


def unknown_model(model: Any, table: dict[str, Any], authorization: str | None) -> Rejection:
    served = ", ".join(visible(table, authorization)) or "none"
    if not isinstance(model, str) or not model:
        return Rejection(400, f"The request names no model. This cluster serves: {served}.", param="model")
    return Rejection(404, f"The model '{model}' does not exist on this cluster. It serves: {served}.",
                     "NotFoundError", "model")  # fmt: skip


def requested_model(body: bytes) -> Any:
    try:
        request = json.loads(body)
    except ValueError:
        return None
    return request.get("model") if isinstance(request, dict) else None


def build(client: Any) -> Starlette:
    """The gateway's ASGI app, forwarding with `client` (an httpx.AsyncClient)."""

    async def models(request: Request) -> JSONResponse:
        table = await run_in_threadpool(routes)
        authorization = request.headers.get("authorization")
        ids = visible(table, authorization)
        if table and not ids:  # every app wants a key and this one opens none: any app's guard says why
            return error(Guard(next(iter(table.values())).key_digests).authorize("/v1/models", authorization))
        return JSONResponse(model_list(ids, table))

    async def forward(request: Request) -> Response:
        body = await request.body()
        table = await run_in_threadpool(routes)
        model = requested_model(body)
        route = table.get(model) if isinstance(model, str) else None
        if route is None:
            return error(unknown_model(model, table, request.headers.get("authorization")))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED}
        upstream = client.build_request("POST", route.endpoint + request.url.path.removeprefix("/v1"),
                                        content=body, headers=headers)  # fmt: skip
        answer = await client.send(upstream, stream=True)
        passed = {k: v for k, v in answer.headers.items() if k.lower() not in DROPPED}
        return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code, headers=passed,
                                 background=BackgroundTask(answer.aclose))  # fmt: skip

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(chat_page.render(""))

    async def health(request: Request) -> JSONResponse:
        """Open, as an app's /health: the model ids routed here (services.lifecycle.served_models reads them)."""
        table = await run_in_threadpool(routes)
        return JSONResponse({"status": "ok", "gateway": True, "models": sorted(table)})

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            *(Route(path, forward, methods=["POST"]) for path in FORWARDED),
            Route("/health", health, methods=["GET"]),
            *(Route(path, page, methods=["GET"]) for path in chat_page.PATHS),
            # Browsers ask the origin's root for an icon on every page of an app's chat page: no content, no error.
            Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),
        ]
    )


@serve.ingress()
class Gateway:
    """One replica; it forwards bytes and holds no model, so it reserves no CPU and never waits for room."""

    def __init__(self) -> None:
        import httpx

        # No read timeout: an answer takes as long as the app takes to write it. The app's own limits bound it.
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0))

    async def __serve_build_asgi_app__(self) -> Starlette:
        return build(self._client)

"""The model replica of an llmctl app: Serve LLM's `LLMServer` (a vLLM engine) that is also the app's HTTP ingress.

The replica answers HTTP with vLLM's own OpenAI app (`LLMServer.__serve_build_asgi_app__`, Serve LLM's direct
streaming), wrapped by services.ingress for keys, limits, /health and the chat page. A request therefore crosses no
Ray hop between the HTTP server and the engine, and streamed tokens go out as vLLM writes them: behind Serve's
HAProxy ingress (how llmctl starts its local clusters) the path is the one of `vllm serve` plus HAProxy; behind
Serve's Python proxy it is one hop, where a separate ingress deployment made two.

Keys and limits arrive as the deployment's user_config, so changing them is a lightweight Serve update that swaps
the guard in place instead of reloading the model. Imports Ray Serve LLM: load only where the app is built or runs.
"""

from __future__ import annotations

from typing import Any

from ray.serve.llm.deployment import LLMServer

from services import ingress
from services.auth import Guard


class LlmctlServer(LLMServer):
    _guard: Guard | None = None  # set by reconfigure(), which Serve calls before the replica takes requests

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self._guard = Guard.from_config(user_config)

    async def __serve_build_asgi_app__(self) -> Any:
        app = await super().__serve_build_asgi_app__()
        ingress.install(app, guard=lambda: self._guard, model=self._llm_config.model_id, check_health=self.check_health)
        return app

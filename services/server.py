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

import os
from typing import Any

from ray.serve.llm.deployment import LLMServer

from services import ingress
from services.auth import Guard


class LlmctlServer(LLMServer):
    _guard: Guard | None = None  # set by reconfigure(), which Serve calls before the replica takes requests
    _app: Any = None  # vLLM's OpenAI app, built before the first reconfigure()
    _adapters: dict[str, dict] = {}  # LoRA adapters loaded in the engine: model id -> {path, fingerprint}

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        self._guard = Guard.from_config(user_config)
        await self._sync_adapters(user_config.get("adapters") or {})

    async def __serve_build_asgi_app__(self) -> Any:
        app = await super().__serve_build_asgi_app__()
        ingress.install(app, guard=lambda: self._guard, model=self._llm_config.model_id, check_health=self.check_health)
        self._app = app
        return app

    async def _sync_adapters(self, wanted: dict[str, dict]) -> None:
        """Load the adapters the app's record lists (vLLM's own runtime LoRA loading, so /v1/models lists them and
        a request's `model` picks one) and drop those it no longer lists: a lightweight update, the base stays."""
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest

        models = self._app.state.openai_serving_models
        for name in sorted(set(self._adapters) - set(wanted)):
            await models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
        for name, adapter in sorted(wanted.items()):
            if self._adapters.get(name) == adapter:
                continue
            request = LoadLoRAAdapterRequest(lora_name=name, lora_path=local_directory(adapter["path"]),
                                             load_inplace=name in self._adapters)  # fmt: skip
            result = await models.load_lora_adapter(request)
            if not isinstance(result, str):
                raise RuntimeError(f"LoRA adapter '{name}' from {adapter['path']} did not load: "
                                   f"{result.error.message}")  # fmt: skip
        self._adapters = dict(wanted)


def local_directory(uri: str) -> str:
    """A local copy of an adapter directory on s3:// (vLLM loads adapters from disk); local paths as they are."""
    from pipelines import storage

    if not storage.is_remote(uri):
        return uri
    import hashlib
    import tempfile

    local = os.path.join(tempfile.gettempdir(), "llmctl-adapters", hashlib.sha256(uri.encode()).hexdigest()[:16])
    if not os.path.exists(os.path.join(local, "adapter_config.json")):
        storage.download_dir(uri, local)
    return local

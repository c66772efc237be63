"""The model deployment class: Serve LLM's `LLMServer` with streams that send their first tokens at once.

LLMServer batches streamed chunks on a fixed clock (every `stream_batching_interval_ms`, 50 ms by default) so fewer
messages cross Serve's proxy; on its own that delays the first token by up to one interval, which dominates TTFT
for short prompts. Here the first chunks (a chat stream's role header and first token) go out as they are produced
and only the rest is batched. Imports Ray Serve LLM: load only where the app is built or runs.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from ray.llm._internal.serve.utils.batcher import Batcher
from ray.serve.llm.deployment import LLMServer

EAGER_CHUNKS = 2


async def first_eager(
    generator: AsyncGenerator[Any, None], interval_ms: float | None, eager: int = EAGER_CHUNKS
) -> AsyncGenerator[list[Any], None]:
    """The first `eager` items one by one as they arrive, then batches of the rest every interval_ms."""
    for _ in range(eager):
        try:
            item = await generator.__anext__()
        except StopAsyncIteration:
            return
        yield [item]
    async for batch in Batcher(generator, interval_ms=interval_ms).stream():
        yield batch


class LlmctlServer(LLMServer):
    def _batch_output_stream(self, generator: AsyncGenerator[Any, None]) -> AsyncGenerator[list[Any], None]:
        return first_eager(generator, self._get_batch_interval_ms())

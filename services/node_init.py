"""What a model replica does before its engine starts, in place of Serve LLM's default node initialization.

By default every replica first runs a Ray task on each node of its placement group to download the model there.
For an s3:// or gs:// model that download is needed and stays. For a model directory on a path every node reads
(a local disk, a shared file system), the task downloads nothing and returns the path unchanged, yet it costs a
fresh Ray worker process that imports Serve LLM, torch and transformers: 20-50 s of each replica start on 2 cores.
"""

from __future__ import annotations

import os

from ray.llm._internal.common.callbacks.base import CallbackBase


class LocalModelDirectory(CallbackBase):
    """Skips the per-node download task; keeps the one side effect the task has for a local path (the torch
    kernel cache directory, which torch cannot create itself when its parent is missing)."""

    async def on_before_node_init(self) -> None:
        import torch.hub

        os.makedirs(os.path.join(os.path.dirname(torch.hub.get_dir()), "kernels"), exist_ok=True)
        self.ctx.run_init_node = False

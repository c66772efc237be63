"""The trained model as a Hugging Face directory (config.json, safetensors, tokenizer files) for transformers/vLLM."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from jobs.train.model import ModelSource
from pipelines import storage

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def gather_state_dict(module: Any, rank: int) -> dict[str, Any]:
    """Full fp32 weights on rank 0 (empty elsewhere). Every rank must call this: under ZeRO-3 each parameter is
    gathered from its shards one at a time, so peak memory stays at one full parameter."""
    import deepspeed
    import torch

    state: dict[str, Any] = {}
    for name, param in module.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if rank == 0:
                state[name] = param.detach().to("cpu", torch.float32, copy=True)
    return state


def save_hf(model: Any, dtype: str, tokenizer_uri: str | None, export_uri: str) -> None:
    """Write a transformers model as a Hugging Face directory at `export_uri`, with the tokenizer's files."""
    import torch

    model.to(getattr(torch, dtype))
    local = tempfile.mkdtemp(prefix="llmctl-export-")
    try:
        model.save_pretrained(local, safe_serialization=True)
        if tokenizer_uri:
            copy_tokenizer(tokenizer_uri, local)
        storage.upload_dir(local, export_uri)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def copy_tokenizer(tokenizer_uri: str, dest: str) -> None:
    """Copy the tokenizer's files next to the weights, so the directory loads with AutoTokenizer as it is."""
    with storage.local_copy(tokenizer_uri) as src:
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(src, name)):
                shutil.copy2(os.path.join(src, name), os.path.join(dest, name))


def export(engine: Any, rank: int, source: ModelSource, dtype: str, tokenizer_uri: str | None, export_uri: str) -> None:
    """Gather the engine's weights (all ranks) and write them from rank 0 as `source` says (head, LoRA merge)."""
    state = gather_state_dict(engine.module, rank)
    if rank == 0:
        save_hf(source.exportable(engine.module.config, state), dtype, tokenizer_uri, export_uri)

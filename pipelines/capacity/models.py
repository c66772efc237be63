"""The shape of the model a stage trains or serves, followed back through the stages it starts from."""

from __future__ import annotations

import json
import os
from typing import Any

from pipelines.capacity.memory import Shape

VOCAB_MULTIPLE = 64  # as jobs.train.model pads the embedding rows


def shape_of(stages: dict[str, Any], ref: str | None, depth: int = 0) -> Shape | None:
    """The Shape of the model that `ref` (a stage name or a Hugging Face directory) exports; None if unknown."""
    if ref is None or depth > len(stages):
        return None
    stage = stages.get(ref)
    if stage is None:
        return _from_hf_dir(ref)
    if stage.kind == "pretrain":
        vocab = _vocab(stages, stage.tokenizer)
        if vocab is None:
            return None
        dims = stage.model.dims()
        padded = -(-vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        moe = stage.model.moe_dims()
        experts = {} if moe is None else {
            "experts": moe["num_experts"], "experts_per_token": moe["experts_per_token"],
            "expert_intermediate": moe["expert_intermediate_size"],
            "moe_layers": dims["num_layers"] // moe["every_n_layers"]}  # fmt: skip
        return Shape(padded, dims["hidden_size"], dims["num_layers"], dims["num_heads"], dims["num_kv_heads"],
                     dims["intermediate_size"], stage.model.tie_embeddings, **experts)  # fmt: skip
    return shape_of(stages, getattr(stage, "model", None), depth + 1)


def _vocab(stages: dict[str, Any], tokenizer: str) -> int | None:
    stage = stages.get(tokenizer)
    if stage is not None:
        return stage.vocab_size if stage.data is not None else _vocab(stages, stage.pretrained)
    path = os.path.join(tokenizer, "tokenizer.json")
    if "://" in tokenizer or not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return len(data.get("model", {}).get("vocab", {})) + len(data.get("added_tokens", []))


def _from_hf_dir(path: str) -> Shape | None:
    config = os.path.join(path, "config.json")
    if "://" in path or not os.path.isfile(config):
        return None
    with open(config) as f:
        c = json.load(f)
    try:
        heads = c["num_attention_heads"]
        tied = c.get("tie_word_embeddings", False)
        return Shape(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], heads,
                     c.get("num_key_value_heads", heads), c["intermediate_size"], tied, **_experts(c))  # fmt: skip
    except KeyError:
        return None


def _experts(c: dict[str, Any]) -> dict[str, int]:
    """The MoE fields of a Hugging Face config (Qwen3-MoE's names; Mixtral's num_local_experts), or none."""
    experts = c.get("num_experts") or c.get("num_local_experts") or 0
    if experts < 2 or "num_experts_per_tok" not in c:
        return {}
    step, dense = c.get("decoder_sparse_step", 1) or 1, set(c.get("mlp_only_layers") or [])
    layers = [i for i in range(c["num_hidden_layers"]) if i not in dense and (i + 1) % step == 0]
    width = c.get("moe_intermediate_size") or c["intermediate_size"]
    return {"experts": experts, "experts_per_token": c["num_experts_per_tok"], "expert_intermediate": width,
            "moe_layers": len(layers)}  # fmt: skip

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
        return Shape(padded, dims["hidden_size"], dims["num_layers"], dims["num_heads"], dims["num_kv_heads"],
                     dims["intermediate_size"], stage.model.tie_embeddings)  # fmt: skip
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
                     c.get("num_key_value_heads", heads), c["intermediate_size"], tied)  # fmt: skip
    except KeyError:
        return None

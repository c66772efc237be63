"""The loss weights of R1-style reasoning tags (`<think>…</think><answer>…</answer>`) in encoded chat rows.

A tag rarely is one token: a byte-level BPE splits "</think><answer>" into pieces such as "</", "think", "><" …,
and the split depends on the neighbouring text. So tags are found in the text, not among token ids: each token is
decoded on its own, the decoded pieces are laid end to end, and every answer token whose piece overlaps a tag
occurrence gets the tag weight. Tags are ASCII, so a multi-byte character split across tokens (decoded as U+FFFD)
cannot hide or fake one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jobs.train.chat_data import IGNORE

_PIECES: dict[str, dict[int, str]] = {}  # per process: tokenizer hash -> token id -> decoded text


def tag_weights(pieces: list[str], labels: np.ndarray, tags: list[str], tag_weight: float) -> np.ndarray:
    """(T,) float32 weights for one row: 0 where the label is IGNORE, tag_weight on answer tokens that spell part of
    a tag, 1 on the other answer tokens. `pieces` is the decoded text of each token of the row."""
    text = "".join(pieces)
    ends = np.cumsum([len(p) for p in pieces])
    starts = ends - np.array([len(p) for p in pieces])
    weights = np.where(labels != IGNORE, 1.0, 0.0).astype(np.float32)
    for tag in tags:
        at = text.find(tag)
        while at != -1:
            overlap = (starts < at + len(tag)) & (ends > at) & (labels != IGNORE)
            weights[overlap] = tag_weight
            at = text.find(tag, at + len(tag))
    return weights


def decoded_pieces(tokenizer_json: str, ids: np.ndarray) -> list[str]:
    """The text of each token on its own (special tokens included), cached per token id."""
    from jobs.train.packing import _tokenizer

    tok = _tokenizer(tokenizer_json)
    cache = _PIECES.setdefault(str(hash(tokenizer_json)), {})
    out = []
    for i in ids.tolist():
        if i not in cache:
            cache[i] = tok.decode([i], skip_special_tokens=False)
        out.append(cache[i])
    return out


def add_tag_weights(
    batch: dict[str, np.ndarray], tokenizer_json: str, tags: list[str], tag_weight: float
) -> dict[str, np.ndarray]:
    """Ray Data batch function: SFT rows (input_ids, labels, length) plus a float32 `weights` column."""
    rows = []
    for ids, labels, length in zip(batch["input_ids"], batch["labels"], batch["length"], strict=True):
        n = int(length)
        row = np.zeros(len(ids), dtype=np.float32)
        row[:n] = tag_weights(decoded_pieces(tokenizer_json, ids[:n]), labels[:n], tags, tag_weight)
        rows.append(row)
    weights = np.stack(rows) if rows else np.zeros((0, batch["input_ids"].shape[1]), dtype=np.float32)
    return {**batch, "weights": weights}


def weighting(tokenizer_json: str, reasoning: Any) -> Any:
    """The `transform` for chat_datasets.prepare that adds tag weights, or None without a reasoning format."""
    if reasoning is None:
        return None

    def transform(ds: Any) -> Any:
        kwargs = {"tokenizer_json": tokenizer_json, "tags": list(reasoning.tags), "tag_weight": reasoning.tag_weight}
        return ds.map_batches(add_tag_weights, batch_format="numpy", fn_kwargs=kwargs)

    return transform

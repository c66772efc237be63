"""Tokenize documents and pack them into fixed-length sequences with Ray Data.

Documents are joined with the EOS token and cut into `seq_len` windows (GPT-style packing, no padding). Each
Ray Data batch of documents is packed on its own, so at most one partial window per batch is dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import storage

if TYPE_CHECKING:
    import ray.data

DOCS_PER_BATCH = 512
_TOKENIZERS: dict[str, Any] = {}  # per-process cache: Ray Data reuses worker processes across tasks


def is_validation(text: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out split: a hash of its text, so the split never moves."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def pack(token_lists: list[list[int]], seq_len: int, eos_id: int) -> np.ndarray:
    """(n, seq_len) int32 windows over the documents joined by EOS; the partial last window is dropped."""
    flat = np.fromiter(chain.from_iterable(ids + [eos_id] for ids in token_lists), dtype=np.int32)
    n = len(flat) // seq_len
    return flat[: n * seq_len].reshape(n, seq_len)


def _tokenizer(tokenizer_json: str) -> Any:
    from tokenizers import Tokenizer

    key = hashlib.sha1(tokenizer_json.encode("utf-8")).hexdigest()
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = Tokenizer.from_str(tokenizer_json)
    return _TOKENIZERS[key]


def tokenize_and_pack(
    batch: dict[str, np.ndarray],
    *,
    tokenizer_json: str,
    text_column: str,
    seq_len: int,
    eos_id: int,
    val_fraction: float,
    split: str,
) -> dict[str, np.ndarray]:
    """Ray Data batch function: keep the documents of `split`, tokenize them and pack them."""
    want_val = split == "val"
    texts = [str(t) for t in batch[text_column] if t and is_validation(str(t), val_fraction) == want_val]
    encodings = _tokenizer(tokenizer_json).encode_batch(texts, add_special_tokens=False) if texts else []
    return {"input_ids": pack([e.ids for e in encodings], seq_len, eos_id)}


def packed_batches(batch: dict[str, np.ndarray], **settings: Any) -> Iterator[dict[str, np.ndarray]]:
    """tokenize_and_pack as Ray Data calls it: a batch that packs into no sequence yields nothing. Returned, its
    empty (0, seq_len) array would be stored as a column of pickled objects instead of tensors like the others."""
    packed = tokenize_and_pack(batch, **settings)
    if len(packed["input_ids"]):
        yield packed


def read_parquet(paths: list[str], filesystem: Any) -> ray.data.Dataset:
    """`ray.data.read_parquet` on Ray Data's first Parquet reader. The newer one (the default in ray 2.60) starts
    32 footer-reading actors every time a dataset executes; on a 2-core machine that cost ~17 s per execution,
    paid by the train and the val split at every Ray Train start (first batch after 57 s instead of 36 s in one
    measured run). The choice is made when the dataset is built, so it is set around this call only."""
    import ray.data

    context = ray.data.DataContext.get_current()
    default, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(paths, filesystem=filesystem)
    finally:
        context.use_datasource_v2 = default


def packed_dataset(
    files: list[str],
    *,
    split: str,
    tokenizer_json: str,
    text_column: str,
    seq_len: int,
    eos_id: int,
    val_fraction: float,
) -> ray.data.Dataset:
    """A lazy Ray Dataset of {"input_ids": int32[seq_len]} rows for one split of the Parquet files."""

    fs, _ = storage.filesystem(files[0])
    paths = [storage.filesystem(f)[1] for f in files]
    ds = read_parquet(paths, fs).select_columns([text_column])
    return ds.map_batches(
        packed_batches,
        batch_size=DOCS_PER_BATCH,
        batch_format="numpy",
        fn_kwargs={
            "tokenizer_json": tokenizer_json,
            "text_column": text_column,
            "seq_len": seq_len,
            "eos_id": eos_id,
            "val_fraction": val_fraction,
            "split": split,
        },
    )

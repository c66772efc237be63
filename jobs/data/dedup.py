"""Exact deduplication on a 128-bit hash of the normalized text, global across the dataset.

Only (id, key) rows are shuffled, hash-partitioned by key with Ray Data's groupby, so two copies of a document
meet in the same partition no matter which block or node they started in; each partition is sorted and marked
at once (numpy), not group by group. The survivor of a group is the row with the smallest id (string order):
deterministic, independent of block layout and of the order rows arrive in. The verdicts are marks
(jobs.data.marks) that a map applies to the documents, so the text itself never moves.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from jobs.data.text import dedup_key, normalize

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

HI_COL, LO_COL = "_exact_hi", "_exact_lo"  # the 128-bit key of the normalized text, in two halves
PART_COL = "_part"
DUP_COL = "exact_dup_of"
REASON = "duplicate:exact"
PARTITION_ROWS = 250_000  # rows of ids and keys one reducer holds at most: ~10 MB, and its sort a few times that


def survivor_of(ids: list[str]) -> list[str | None]:
    """For one group of equal documents: None for the smallest id, the smallest id for every other row."""
    survivor = min(ids)
    return [None if i == survivor else survivor for i in ids]


def shuffle_partitions(num_partitions: int | None = None) -> int:
    """Partitions for a groupby shuffle: as given, else one per CPU of the cluster (Ray's default of 200 costs
    seconds of scheduling on a small cluster and buys nothing)."""
    if num_partitions is not None:
        return num_partitions
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def with_null_column(ds: ray.data.Dataset, name: str) -> ray.data.Dataset:
    """`ds` with an all-null string column `name` appended."""
    import pyarrow as pa

    return ds.map_batches(lambda t: t.append_column(name, pa.nulls(t.num_rows, pa.string())), batch_format="pyarrow")


def digests(texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) uint64 halves of each text's 128-bit dedup key (zeros for a missing text)."""
    def digest(text: str | None) -> bytes:
        return bytes(16) if text is None else hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).digest()

    raw = b"".join(digest(t) for t in texts)
    halves = np.frombuffer(raw, dtype=np.uint64).reshape(-1, 2)
    return halves[:, 0].copy(), halves[:, 1].copy()


def add_keys(batch: pa.Table, text_col: str = "text", live: np.ndarray | None = None) -> pa.Table:
    """The batch with its exact-dedup key: uint64 columns HI_COL, LO_COL, null where `live` is False."""
    import pyarrow as pa

    texts = batch.column(text_col).to_pylist()
    if live is not None:
        texts = [t if ok else None for t, ok in zip(texts, live.tolist(), strict=True)]
    hi, lo = digests(texts)
    missing = np.array([t is None for t in texts], dtype=bool)
    batch = batch.append_column(HI_COL, pa.array(hi, pa.uint64(), mask=missing))
    return batch.append_column(LO_COL, pa.array(lo, pa.uint64(), mask=missing))


def marks_in_partition(group: pa.Table) -> pa.Table:
    """Exact-duplicate marks of one partition of (id, key) rows: every row whose key an earlier id holds."""
    import pyarrow.compute as pc

    from jobs.data import marks

    order = pc.sort_indices(group, [(HI_COL, "ascending"), (LO_COL, "ascending"), ("id", "ascending")])
    ordered = group.take(order)
    hi, lo = ordered[HI_COL].to_numpy(), ordered[LO_COL].to_numpy()
    first = np.concatenate(([True], (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])))
    survivor = np.maximum.accumulate(np.where(first, np.arange(len(first)), 0))
    ids = ordered["id"].combine_chunks()
    dup = np.flatnonzero(~first)
    return marks.table(ids.take(dup), REASON, ids.take(survivor[dup]))


def partitions_for(rows: int, num_partitions: int | None = None) -> int:
    """Partitions of a shuffle of small columns: as given, else one per CPU, more when one would exceed
    PARTITION_ROWS rows (the memory any reducer needs stays bounded as the corpus grows)."""
    return num_partitions or max(shuffle_partitions(), -(-rows // PARTITION_ROWS))


def exact_marks(ds: ray.data.Dataset, id_col: str = "id", num_partitions: int | None = None) -> ray.data.Dataset:
    """Marks (jobs.data.marks.SCHEMA) of the exact duplicates among `ds`'s rows with a key (see `add_keys`):
    a hash shuffle of (id, key) only, vectorized per partition."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray.data

    from jobs.data import marks

    parts = partitions_for(ds.count(), num_partitions)

    def project(batch: pa.Table) -> pa.Table:
        batch = batch.filter(pc.is_valid(batch[HI_COL]))
        part = pa.array((batch[HI_COL].to_numpy() % np.uint64(parts)).astype(np.int64))
        return pa.table({"id": batch[id_col].cast(pa.string()), HI_COL: batch[HI_COL], LO_COL: batch[LO_COL],
                         PART_COL: part})  # fmt: skip

    keyed = ds.map_batches(project, batch_format="pyarrow").materialize()
    if keyed.count() == 0:  # Ray's hash-shuffle reducer fails on an input without a single row
        return ray.data.from_arrow(marks.SCHEMA.empty_table())
    grouped = keyed.groupby(PART_COL, num_partitions=parts)
    return grouped.map_groups(marks_in_partition, batch_format="pyarrow").materialize()


def mark_exact_duplicates(
    ds: ray.data.Dataset, text_col: str = "text", id_col: str = "id", num_partitions: int | None = None
) -> ray.data.Dataset:
    """Add a string column `exact_dup_of`: null for the survivor of each group of equal normalized texts
    (the smallest id), the survivor's id for every other member. Row order is kept."""
    from jobs.data import marks

    keyed = ds.map_batches(add_keys, batch_format="pyarrow", fn_kwargs={"text_col": text_col}).materialize()
    if keyed.count() == 0:  # Ray's hash-shuffle reducer fails on an input without a single row
        return with_null_column(ds, DUP_COL)
    found = marks.build(exact_marks(keyed, id_col, num_partitions))
    return marks.with_dup_column(keyed, found, id_col, [HI_COL, LO_COL], DUP_COL)


def exact_groups(texts: list[str], ids: list[str]) -> list[str | None]:
    """In-memory version of `mark_exact_duplicates` for small inputs and benchmarks: `exact_dup_of` per row."""
    keys = np.array([dedup_key(t) for t in texts])
    out: list[str | None] = [None] * len(texts)
    order = np.argsort(keys, kind="stable")
    groups = np.split(order, np.flatnonzero(keys[order][1:] != keys[order][:-1]) + 1)
    for members in groups:
        for row, mark in zip(members, survivor_of([ids[i] for i in members]), strict=True):
            out[row] = mark
    return out

"""Exact deduplication on a hash of the normalized text, global across the dataset.

Rows are shuffled by key with Ray Data's groupby, so two copies of a document meet in the same group no
matter which block or node they started in. The survivor of a group is the row with the smallest id
(string order): deterministic, independent of block layout and of the order rows arrive in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from jobs.data.text import dedup_key

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

KEY_COL = "_exact_key"
DUP_COL = "exact_dup_of"


def _add_keys(batch: pa.Table, text_col: str) -> pa.Table:
    import pyarrow as pa

    keys = [dedup_key(t) for t in batch.column(text_col).to_pylist()]
    return batch.append_column(KEY_COL, pa.array(keys, type=pa.string()))


def survivor_of(ids: list[str]) -> list[str | None]:
    """For one group of equal documents: None for the smallest id, the smallest id for every other row."""
    survivor = min(ids)
    return [None if i == survivor else survivor for i in ids]


def _mark_group(group: pa.Table, id_col: str) -> pa.Table:
    import pyarrow as pa

    ids = [str(i) for i in group.column(id_col).to_pylist()]
    marks = survivor_of(ids)
    return group.drop_columns([KEY_COL]).append_column(DUP_COL, pa.array(marks, type=pa.string()))


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


def mark_exact_duplicates(
    ds: ray.data.Dataset, text_col: str = "text", id_col: str = "id", num_partitions: int | None = None
) -> ray.data.Dataset:
    """Add a string column `exact_dup_of`: null for the survivor of each group of equal normalized texts
    (the smallest id), the survivor's id for every other member. Row order is not preserved."""
    ds = ds.materialize()
    if ds.count() == 0:  # Ray's hash-shuffle reducer fails on an input without a single row
        return with_null_column(ds, DUP_COL)
    keyed = ds.map_batches(_add_keys, batch_format="pyarrow", fn_kwargs={"text_col": text_col})
    grouped = keyed.groupby(KEY_COL, num_partitions=shuffle_partitions(num_partitions))
    return grouped.map_groups(_mark_group, batch_format="pyarrow", fn_kwargs={"id_col": id_col})


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

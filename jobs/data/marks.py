"""Verdicts of the dedup steps, applied to the documents without moving them.

Exact and near dedup decide on small columns (ids, hashes, bucket keys) that go through shuffles; the text does
not. Their verdicts are "marks": rows (id, reason, dup_of) for the documents to reject. `build` sorts the marks
by id into chunks kept in the object store, each with its id range; `lookup` gives a batch of documents its marks
by fetching only the chunks whose range meets the batch's ids. A block holds consecutive rows of one input file
(ids are file index + position), so that is one or two chunks: applying the marks is a map over the documents,
and no worker ever holds more than a few chunks, however many duplicates the corpus has.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import ray.data

SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("dup_of", pa.string())])
ROWS_PER_CHUNK = 200_000  # ~10 MB of marks: what one lookup may fetch


@dataclass(frozen=True)
class Marks:
    """Sorted chunks of marks: `lows[i]`..`highs[i]` is the id range of chunk `refs[i]`."""

    lows: tuple[str, ...] = ()
    highs: tuple[str, ...] = ()
    refs: tuple[Any, ...] = field(default=(), repr=False)

    def chunks_for(self, low: str, high: str) -> list[Any]:
        """Refs of the chunks whose id range meets [low, high]."""
        start = bisect.bisect_left(self.highs, low)
        stop = bisect.bisect_right(self.lows, high)
        return list(self.refs[start:stop])


def table(ids: pa.Array, reason: str, dup_of: pa.Array) -> pa.Table:
    """Marks rejecting `ids` with one reason, each pointing at its survivor."""
    n = len(ids)
    return pa.Table.from_arrays([ids.cast(pa.string()), pa.array([reason] * n, pa.string()),
                                 dup_of.cast(pa.string())], schema=SCHEMA)  # fmt: skip


def _bounds(chunk: pa.Table) -> tuple[str | None, str | None, int]:
    if chunk.num_rows == 0:
        return None, None, 0
    return chunk["id"][0].as_py(), chunk["id"][-1].as_py(), chunk.num_rows


def build(ds: ray.data.Dataset) -> Marks:
    """Marks from a dataset of SCHEMA rows (ids unique): a distributed sort by id, then the chunks' ranges."""
    import ray

    n = ds.count()
    if n == 0:
        return Marks()
    ordered = ds.repartition(target_num_rows_per_block=ROWS_PER_CHUNK) if n > ROWS_PER_CHUNK else ds
    ordered = ordered.sort("id").materialize()
    refs = ordered.to_arrow_refs()
    bounds_of = ray.remote(_bounds)
    bounds = ray.get([bounds_of.remote(ref) for ref in refs])
    kept = [(lo, hi, ref) for (lo, hi, rows), ref in zip(bounds, refs, strict=True) if rows]
    return Marks(tuple(k[0] for k in kept), tuple(k[1] for k in kept), tuple(k[2] for k in kept))


def lookup(marks: list[Marks], ids: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(reason, dup_of) for each id: from the first of `marks` that holds it, null where none does."""
    import ray

    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    n = len(ids)
    reason, dup_of = pa.nulls(n, pa.string()), pa.nulls(n, pa.string())
    if n == 0:
        return reason, dup_of
    bounds = pc.min_max(ids)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    for found in reversed(marks):  # the first set wins: it is applied last
        refs = found.chunks_for(low, high)
        if not refs:
            continue
        chunk = pa.concat_tables(ray.get(refs))
        where = pc.index_in(ids, value_set=chunk["id"])
        reason = pc.coalesce(pc.take(chunk["reason"], where), reason)
        dup_of = pc.coalesce(pc.take(chunk["dup_of"], where), dup_of)
    return reason, dup_of


def with_dup_column(ds: ray.data.Dataset, found: Marks, id_col: str, drop: list[str], name: str) -> ray.data.Dataset:
    """`ds` without its key columns `drop`, with column `name`: each row's survivor in `found`, null if none."""

    def apply(batch: pa.Table) -> pa.Table:
        _, dup_of = lookup([found], batch[id_col].cast(pa.string()))
        return batch.drop_columns(drop).append_column(name, dup_of)

    return ds.map_batches(apply, batch_format="pyarrow")

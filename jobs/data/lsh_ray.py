"""The Ray Data steps of MinHash-LSH near-dedup; `jobs.data.minhash.mark_near_duplicates` chains them.

signatures and band keys per batch -> groupby bucket: candidate pairs -> groupby pair: distinct ->
(optional) two cogroups that bring both shingle sets of a pair together for the exact Jaccard ->
connected components (jobs.data.components) -> cogroup of the rows with their component root.
Every step is a map or a groupby; nothing is collected on the driver except counts and the histogram.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from jobs.data.minhash import (
    MAX_PAIR_BUCKET,
    band_keys,
    has_shingles,
    set_jaccard,
    signatures_from_hashes,
)
from jobs.data.shingle_hash import shingle_hashes
from pipelines.spec.curation import MinHashConfig

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

LABEL_COL = "_near_label"
OUT_COL = "near_dup_of"


def _ids(batch: pa.Table, id_col: str) -> np.ndarray:
    return np.array([str(i) for i in batch[id_col].to_pylist()], dtype=object)


def bucket_rows(batch: pa.Table, cfg: MinHashConfig, bands: int, rows: int, text_col: str, id_col: str) -> pa.Table:
    """One row per (document, band): its bucket key and id. Documents without shingles get no rows."""
    import pyarrow as pa

    hashes, offsets = shingle_hashes(batch[text_col].to_pylist(), cfg.ngram_size)
    sig = signatures_from_hashes(hashes, offsets, cfg.num_perm, cfg.seed)
    live = has_shingles(sig)
    keys = band_keys(sig[live], bands, rows)
    nodes = np.repeat(_ids(batch, id_col)[live], bands)
    return pa.table({"_bucket": pa.array(keys.ravel(), pa.uint64()), "_node": pa.array(nodes, pa.string())})


def bucket_pairs(group: pa.Table) -> pa.Table:
    """All pairs (u < v) of a bucket, or a star around its smallest id when it holds over MAX_PAIR_BUCKET ids.
    `collisions` carries C(g, 2) on the bucket's first row so the driver can sum it."""
    import pyarrow as pa

    nodes = sorted(set(group["_node"].to_pylist()))
    g = len(nodes)
    if g > MAX_PAIR_BUCKET:
        pairs = [(nodes[0], n) for n in nodes[1:]]
    else:
        pairs = list(itertools.combinations(nodes, 2))
    collisions = [g * (g - 1) // 2] + [0] * (len(pairs) - 1) if pairs else []
    return pa.table({
        "u": pa.array([p[0] for p in pairs], pa.string()),
        "v": pa.array([p[1] for p in pairs], pa.string()),
        "collisions": pa.array(collisions, pa.int64()),
    })


def candidate_pairs(ds: ray.data.Dataset, cfg: MinHashConfig, bands: int, rows: int, text_col: str, id_col: str,
                    partitions: int) -> tuple[ray.data.Dataset, int]:
    """Distinct candidate pairs (u, v) and the number of bucket collisions behind them."""
    keyed = ds.map_batches(bucket_rows, batch_format="pyarrow", fn_kwargs={
        "cfg": cfg, "bands": bands, "rows": rows, "text_col": text_col, "id_col": id_col})
    pairs = keyed.groupby("_bucket", num_partitions=partitions).map_groups(bucket_pairs, batch_format="pyarrow")
    pairs = pairs.materialize()
    collisions = int(pairs.sum("collisions") or 0)
    if collisions == 0:
        return pairs.select_columns(["u", "v"]), 0
    distinct = pairs.groupby(["u", "v"], num_partitions=partitions).count().select_columns(["u", "v"])
    return distinct.materialize(), collisions


def shingle_rows(batch: pa.Table, ngram_size: int, text_col: str, id_col: str) -> pa.Table:
    """(_key=id, _other=null, _sh=sorted unique shingle hashes) per document, for the exact-Jaccard check."""
    import pyarrow as pa

    hashes, offsets = shingle_hashes(batch[text_col].to_pylist(), ngram_size)
    sets = [np.unique(hashes[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)]
    return pa.table({
        "_key": pa.array(_ids(batch, id_col), pa.string()),
        "_other": pa.nulls(len(sets), pa.string()),
        "_sh": pa.array(sets, pa.list_(pa.uint64())),
    })


def _split_group(group: pa.Table) -> tuple[np.ndarray | None, pa.Table]:
    """A cogroup's own shingle set (the row whose _other is null) and its pair rows."""
    import pyarrow.compute as pc

    own = group.filter(pc.is_null(group["_other"]))
    pairs = group.filter(pc.is_valid(group["_other"]))
    sh = np.asarray(own["_sh"][0].values, dtype=np.uint64) if own.num_rows else None
    return sh, pairs


def carry_left_set(group: pa.Table) -> pa.Table:
    """Group of u: re-key each pair (u, v) by v, carrying u's shingle set along."""
    import pyarrow as pa

    sh, pairs = _split_group(group)
    n = pairs.num_rows
    if sh is None or n == 0:
        return pa.table({"_key": pa.array([], pa.string()), "_other": pa.array([], pa.string()),
                         "_sh": pa.array([], pa.list_(pa.uint64()))})
    return pa.table({
        "_key": pairs["_other"],
        "_other": pa.array([group["_key"][0].as_py()] * n, pa.string()),
        "_sh": pa.array([sh] * n, pa.list_(pa.uint64())),
    })


def check_pairs(group: pa.Table, threshold: float) -> pa.Table:
    """Group of v: the pairs (u, v) whose exact shingle Jaccard reaches the threshold."""
    import pyarrow as pa

    sh_v, pairs = _split_group(group)
    v = group["_key"][0].as_py()
    keep = []
    if sh_v is not None:
        for u, sh_u in zip(pairs["_other"].to_pylist(), pairs["_sh"].to_numpy(zero_copy_only=False), strict=True):
            if set_jaccard(np.asarray(sh_u, dtype=np.uint64), sh_v) >= threshold:
                keep.append(u)
    return pa.table({"u": pa.array(keep, pa.string()), "v": pa.array([v] * len(keep), pa.string())})


def verified_pairs(ds: ray.data.Dataset, pairs: ray.data.Dataset, cfg: MinHashConfig, text_col: str, id_col: str,
                   partitions: int) -> ray.data.Dataset:
    """Pairs whose exact Jaccard >= cfg.threshold: two cogroups, first by u, then by v."""
    import pyarrow as pa

    sets = ds.map_batches(shingle_rows, batch_format="pyarrow", fn_kwargs={
        "ngram_size": cfg.ngram_size, "text_col": text_col, "id_col": id_col}).materialize()

    def as_rows(t: pa.Table) -> pa.Table:
        return pa.table({"_key": t["u"], "_other": t["v"], "_sh": pa.nulls(t.num_rows, pa.list_(pa.uint64()))})

    keyed = pairs.map_batches(as_rows, batch_format="pyarrow")
    by_v = keyed.union(sets).groupby("_key", num_partitions=partitions).map_groups(carry_left_set,
                                                                                  batch_format="pyarrow")
    checked = by_v.union(sets).groupby("_key", num_partitions=partitions).map_groups(
        check_pairs, batch_format="pyarrow", fn_kwargs={"threshold": cfg.threshold})
    return checked.materialize()


def attach_labels(group: pa.Table, id_col: str) -> pa.Table:
    """Cogroup of one id: the document row(s) and at most one label row -> rows with `near_dup_of`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    labels = group.filter(pc.is_valid(group[LABEL_COL]))[LABEL_COL].to_pylist()
    rows = group.filter(pc.is_null(group[LABEL_COL])).drop_columns([LABEL_COL])
    root = labels[0] if labels else None
    return rows.append_column(OUT_COL, pa.array([root] * rows.num_rows, pa.string()))


def mark_rows(ds: ray.data.Dataset, members: ray.data.Dataset | None, id_col: str,
              partitions: int) -> ray.data.Dataset:
    """`near_dup_of` = the component root for member rows, null for the rest: a cogroup on id."""
    import pyarrow as pa

    from jobs.data.dedup import with_null_column

    if members is None:
        return with_null_column(ds, OUT_COL)

    # Both sides of the union get the same schema (the shuffle concatenates their blocks): the documents' columns
    # plus the label; label rows are null except for the id and the label. `ds` is materialized, so its
    # schema costs nothing.
    schema = ds.schema().base_schema

    def as_labels(t: pa.Table) -> pa.Table:
        cols = {f.name: t["v"].cast(f.type) if f.name == id_col else pa.nulls(t.num_rows, f.type) for f in schema}
        return pa.table({**cols, LABEL_COL: t["u"]}, schema=schema.append(pa.field(LABEL_COL, pa.string())))

    def with_label(t: pa.Table) -> pa.Table:
        return t.append_column(pa.field(LABEL_COL, pa.string()), pa.nulls(t.num_rows, pa.string()))

    labels = members.map_batches(as_labels, batch_format="pyarrow")
    rows = ds.map_batches(with_label, batch_format="pyarrow")
    grouped = rows.union(labels).groupby(id_col, num_partitions=partitions)
    return grouped.map_groups(attach_labels, batch_format="pyarrow", fn_kwargs={"id_col": id_col})


def cluster_histogram(members: ray.data.Dataset) -> tuple[int, dict[int, int]]:
    """(clusters, {size: count}) from the `size` column of the star edges: a histogram per block, summed here
    (the driver receives one row per block and size, never the edges)."""
    import pyarrow as pa

    def per_block(t: pa.Table) -> pa.Table:
        sizes, counts = np.unique(t["size"].to_numpy(), return_counts=True)
        return pa.table({"size": sizes, "count": counts})

    hist: dict[int, int] = {}
    for row in members.map_batches(per_block, batch_format="pyarrow", batch_size=None).take_all():
        if row["size"] > 0:
            hist[int(row["size"])] = hist.get(int(row["size"]), 0) + int(row["count"])
    return sum(hist.values()), dict(sorted(hist.items()))

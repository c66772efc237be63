"""The Ray Data steps of MinHash-LSH near-dedup; `jobs.data.minhash.near_marks` chains them.

band keys per document (in the stage's one map over the text) -> (bucket, id) rows hash-partitioned by bucket,
each partition sorted and paired at once: candidate pairs -> (optional) two cogroups that bring both shingle sets
of a pair together for the exact Jaccard -> connected components: in one task while the pairs fit one
(IN_MEMORY_PAIRS; they are a few per duplicate), else Large/Small-Star rounds (jobs.data.components) -> marks
(jobs.data.marks) that a map applies to the documents. Only ids and keys go through shuffles, never the text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from jobs.data.minhash import (
    band_keys,
    bucket_pairs,
    has_shingles,
    set_jaccard,
    signatures_from_hashes,
    unique_pairs,
)
from jobs.data.shingle_hash import shingle_hashes
from pipelines.spec.curation import MinHashConfig

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

BANDS_COL = "_bands"
PART_COL = "_part"
OUT_COL = "near_dup_of"
REASON = "duplicate:near"


def _ids(batch: pa.Table, id_col: str) -> np.ndarray:
    return np.array([str(i) for i in batch[id_col].to_pylist()], dtype=object)


def add_band_keys(batch: pa.Table, cfg: MinHashConfig, bands: int, rows: int, text_col: str = "text",
                  live: np.ndarray | None = None) -> pa.Table:
    """The batch with BANDS_COL: each document's LSH bucket keys, null where `live` is False or it has no
    shingles (such a document is nobody's near-duplicate)."""
    import pyarrow as pa

    texts = batch[text_col].to_pylist()
    present = np.array([t is not None for t in texts], dtype=bool)
    docs = np.flatnonzero(present if live is None else live & present)
    hashes, offsets = shingle_hashes([texts[i] for i in docs], cfg.ngram_size)
    sig = signatures_from_hashes(hashes, offsets, cfg.num_perm, cfg.seed)
    shingled = has_shingles(sig)
    keys = np.zeros((len(texts), bands), dtype=np.uint64)
    keys[docs[shingled]] = band_keys(sig[shingled], bands, rows)
    missing = np.ones(len(texts), dtype=bool)
    missing[docs[shingled]] = False
    values = pa.array(keys.ravel(), pa.uint64())
    column = pa.FixedSizeListArray.from_arrays(values, bands, mask=pa.array(missing))
    return batch.append_column(BANDS_COL, column)


def bucket_rows(batch: pa.Table, id_col: str, exclude: list, parts: int) -> pa.Table:
    """One row per (document, band) of the documents with band keys that no mark in `exclude` rejects:
    its bucket key, id and shuffle partition."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from jobs.data import marks

    batch = batch.filter(pc.is_valid(batch[BANDS_COL]))
    ids = batch[id_col].cast(pa.string())
    if exclude and batch.num_rows:
        reason, _ = marks.lookup(exclude, ids)
        batch, ids = batch.filter(pc.is_null(reason)), ids.filter(pc.is_null(reason))
    keys = batch[BANDS_COL].combine_chunks()
    bands = keys.type.list_size
    buckets = keys.flatten().to_numpy()
    nodes = ids.combine_chunks().take(np.repeat(np.arange(batch.num_rows), bands))
    return pa.table({"_bucket": pa.array(buckets, pa.uint64()), "_node": nodes,
                     PART_COL: pa.array((buckets % np.uint64(parts)).astype(np.int64))})  # fmt: skip


def sorted_codes(ids: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(the distinct ids in string order, each id's position among them): integers that sort like the ids."""
    import pyarrow.compute as pc

    distinct = pc.unique(ids)
    distinct = distinct.take(pc.sort_indices(distinct))
    return distinct, pc.index_in(ids, value_set=distinct).to_numpy()


def pairs_in_partition(group: pa.Table) -> pa.Table:
    """Candidate pairs (u < v) of one partition of bucket rows, all buckets at once (minhash.bucket_pairs);
    `collisions` carries the partition's (bucket, pair) count on its first row so the driver can sum it."""
    import pyarrow as pa

    nodes, codes = sorted_codes(group["_node"].combine_chunks())
    u, v, collisions = bucket_pairs(group["_bucket"].to_numpy(), codes)
    u, v = unique_pairs(u, v)
    counts = np.zeros(len(u), dtype=np.int64)
    counts[:1] = collisions
    return pa.table({"u": nodes.take(u), "v": nodes.take(v), "collisions": counts})


def candidate_pairs(ds: ray.data.Dataset, id_col: str, exclude: list, parts: int) -> tuple[ray.data.Dataset, int]:
    """Candidate pairs (u, v; a pair found in several partitions repeats) and the bucket collisions behind them."""
    keyed = ds.map_batches(bucket_rows, batch_format="pyarrow",
                           fn_kwargs={"id_col": id_col, "exclude": exclude, "parts": parts}).materialize()  # fmt: skip
    if keyed.count() == 0:  # Ray's hash-shuffle reducer fails on an input without a single row
        return keyed, 0
    grouped = keyed.groupby(PART_COL, num_partitions=parts)
    pairs = grouped.map_groups(pairs_in_partition, batch_format="pyarrow").materialize()
    return pairs, int(pairs.sum("collisions") or 0) if pairs.count() else 0


def distinct_pairs(pairs: ray.data.Dataset, parts: int) -> ray.data.Dataset:
    return pairs.groupby(["u", "v"], num_partitions=parts).count().select_columns(["u", "v"]).materialize()


def components_in_one_task(pair_refs: list) -> tuple[pa.Table, dict]:
    """Near-duplicate marks and cluster stats from all candidate (or verified) pairs, in one process: the
    pairs are a few per duplicate, far smaller than the corpus (minhash.components, vectorized)."""
    import pyarrow as pa
    import ray

    from jobs.data import marks
    from jobs.data.minhash import cluster_stats, label_components

    found = pa.concat_tables(ray.get(pair_refs)).select(["u", "v"])
    ends = pa.concat_arrays([found["u"].combine_chunks(), found["v"].combine_chunks()])
    nodes, codes = sorted_codes(ends)
    u, v = unique_pairs(codes[: found.num_rows], codes[found.num_rows :])
    label, rounds = label_components(len(nodes), u, v)
    clusters, sizes = cluster_stats(label)
    dup = np.flatnonzero(label != np.arange(len(label)))
    stats = {"pairs": len(u), "clusters": clusters, "cluster_sizes": sizes, "duplicates": len(dup),
             "component_rounds": rounds}  # fmt: skip
    return marks.table(nodes.take(dup), REASON, nodes.take(label[dup])), stats


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


def star_marks(members: ray.data.Dataset) -> ray.data.Dataset:
    """Marks from the star edges (u = root, v = member) of the distributed connected components."""
    from jobs.data import marks

    return members.map_batches(lambda t: marks.table(t["v"].combine_chunks(), REASON, t["u"].combine_chunks()),
                               batch_format="pyarrow")  # fmt: skip


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

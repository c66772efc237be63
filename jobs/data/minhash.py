"""MinHash-LSH near-duplicate detection (Broder 1997; banding from Leskovec, Rajaraman & Ullman, MMDS ch. 3).

Pipeline: word n-gram shingles of normalized text -> MinHash signatures (numpy, whole batches at once) ->
LSH band keys -> documents sharing a band key are candidates -> optional exact-Jaccard check -> connected
components -> the smallest id of each component survives, every other member gets `near_dup_of`.

Hash family: h_j(x) = (a_j * x + b_j) mod 2^32 on 32-bit shingle hashes x (the high half of a splitmix64-mixed
64-bit hash), with a_j odd so that each h_j permutes the 32-bit values: the multiply-add family of
Dietzfelbinger et al. 1997, whose order is decided by the well-mixed high bits. Computing it in uint32 makes
the reduction mod 2^32 exact by construction, so there is no a*x+b overflow to get wrong (the classic bug is
a 61-bit prime with uint64 products), and it is twice as fast as uint64 arithmetic.
tests/jobs/data/test_minhash.py checks that the measured LSH candidate rate follows the S-curve
1-(1-s^r)^b, which is what the family has to deliver.

This module is the single-process engine (also used by bench/dedup.py); `mark_near_duplicates` at the
bottom runs it on a Ray Dataset, with the cluster-wide parts in jobs.data.components.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from jobs.data.shingle_hash import mix64, shingle_hashes
from pipelines.lsh import describe, resolved_bands_rows
from pipelines.spec.curation import MinHashConfig

if TYPE_CHECKING:
    import ray.data

EMPTY = np.uint32(0xFFFFFFFF)  # signature of a document without shingles; such documents never get a band key
CHUNK_SHINGLES = 4096  # (num_perm x 4096) uint32 scratch stays in cache: several times faster than one big matrix


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of the num_perm hash functions: a odd (so x -> a*x+b is a bijection mod 2^32), b uniform."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def signatures_from_hashes(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """(docs, num_perm) uint32 MinHash signatures from 64-bit shingle hashes grouped by `offsets`."""
    a, b = permutations(num_perm, seed)
    x = (hashes >> np.uint64(32)).astype(np.uint32)
    n_docs = len(offsets) - 1
    sig = np.full((n_docs, num_perm), EMPTY, dtype=np.uint32)
    doc = 0
    while doc < n_docs:
        # the documents [doc, stop) together hold at most CHUNK_SHINGLES shingles
        stop = int(np.searchsorted(offsets, offsets[doc] + CHUNK_SHINGLES, side="right")) - 1
        if stop <= doc:  # one document longer than a chunk
            _minhash_long(x[offsets[doc] : offsets[doc + 1]], a, b, sig[doc])
            stop = doc + 1
        else:
            _minhash_chunk(x, offsets[doc : stop + 1], a, b, sig[doc:stop])
        doc = stop
    return sig


def _minhash_chunk(x: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """Signatures of consecutive documents whose shingles are x[offsets[0]:offsets[-1]], written into out."""
    lo, hi = int(offsets[0]), int(offsets[-1])
    if hi == lo:
        return
    # (num_perm, shingles): reducing along contiguous rows is ~10x faster than along axis 0.
    # uint32 products wrap mod 2^32, which is the hash family's definition.
    v = np.multiply.outer(a, x[lo:hi])
    v += b[:, None]
    nonempty = offsets[1:] > offsets[:-1]
    out[nonempty] = np.minimum.reduceat(v, offsets[:-1][nonempty] - lo, axis=1).T


def _minhash_long(x: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    for start in range(0, len(x), CHUNK_SHINGLES):
        v = np.multiply.outer(a, x[start : start + CHUNK_SHINGLES])
        v += b[:, None]
        np.minimum(out, v.min(axis=1), out=out)


def signatures(texts: list[str], cfg: MinHashConfig) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures of the texts' word n-gram shingles."""
    hashes, offsets = shingle_hashes(texts, cfg.ngram_size)
    return signatures_from_hashes(hashes, offsets, cfg.num_perm, cfg.seed)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) uint64 bucket keys: band k of a document hashes its rows k*rows..(k+1)*rows-1 and k itself,
    so equal keys mean equal bands (up to 2^-64 collisions), never the same rows in different bands."""
    keys = np.empty((sig.shape[0], bands), dtype=np.uint64)
    for k in range(bands):
        h = np.full(sig.shape[0], k + 1, dtype=np.uint64)
        for j in range(k * rows, (k + 1) * rows):
            h = mix64(h ^ sig[:, j].astype(np.uint64))
        keys[:, k] = h
    return keys


def has_shingles(sig: np.ndarray) -> np.ndarray:
    return sig[:, 0] != EMPTY


MAX_PAIR_BUCKET = 64  # buckets up to this size yield all their pairs; larger ones a star around their first doc


def bucket_pairs(keys: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Candidate pairs (u < v, as doc numbers) from documents sharing a bucket key, and the number of
    (bucket, pair) collisions. Each bucket of size g yields its g(g-1)/2 pairs, or for g > MAX_PAIR_BUCKET the
    g-1 pairs with its smallest doc: enough for connected components, bounded for giant buckets."""
    order = np.lexsort((docs, keys))
    k, d = keys[order], docs[order]
    new = np.concatenate(([True], k[1:] != k[:-1]))
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    size = np.diff(np.concatenate((starts, [len(k)])))[group]
    collisions = int((size * (size - 1) // 2)[new].sum())
    pos = np.arange(len(k)) - starts[group]  # position inside the bucket
    star = size > MAX_PAIR_BUCKET
    later = np.where(star, np.where(pos == 0, size - 1, 0), size - pos - 1)  # partners after this element
    left = np.repeat(np.arange(len(k)), later)
    step = np.arange(len(left)) - np.repeat(np.cumsum(later) - later, later)
    right = left + 1 + step
    u, v = d[left], d[right]
    return np.minimum(u, v), np.maximum(u, v), collisions


def unique_pairs(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.unique(np.stack([u, v], axis=1), axis=0) if len(u) else np.empty((0, 2), dtype=np.int64)
    return pairs[:, 0], pairs[:, 1]


def pair_jaccard(hashes: np.ndarray, offsets: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Exact Jaccard of the shingle-hash sets of documents u[i] and v[i] (a loop over pairs, not shingles)."""
    sets = {}
    out = np.empty(len(u), dtype=float)
    for i, (a, b) in enumerate(zip(u.tolist(), v.tolist(), strict=True)):
        for d in (a, b):
            if d not in sets:
                sets[d] = np.unique(hashes[offsets[d] : offsets[d + 1]])
        out[i] = set_jaccard(sets[a], sets[b])
    return out


def set_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted unique arrays."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Connected components of an n-node graph: label[i] = smallest node of i's component."""
    return label_components(n, u, v)[0]


def label_components(n: int, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, int]:
    """(label, rounds): min-label propagation over the edges plus pointer jumping (label = label[label]), both
    vectorized; pointer jumping makes the number of rounds logarithmic in the component diameter."""
    label = np.arange(n)
    rounds = 0
    while True:
        rounds += 1
        new = label.copy()
        np.minimum.at(new, u, label[v])
        np.minimum.at(new, v, label[u])
        new = new[new]
        if np.array_equal(new, label):
            return label, rounds
        label = new


def cluster_stats(label: np.ndarray) -> tuple[int, dict[int, int]]:
    """(number of clusters with 2+ members, {cluster size: how many clusters})."""
    sizes = np.bincount(label)
    sizes = sizes[sizes > 1]
    hist = np.bincount(sizes)
    return len(sizes), {int(s): int(c) for s, c in enumerate(hist) if c}


def candidate_pairs(hashes: np.ndarray, offsets: np.ndarray, cfg: MinHashConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Distinct LSH candidate pairs (u < v, document indices) and the bucket-collision count."""
    bands, rows = resolved_bands_rows(cfg)
    sig = signatures_from_hashes(hashes, offsets, cfg.num_perm, cfg.seed)
    live = has_shingles(sig)
    keys = band_keys(sig[live], bands, rows)
    u, v, collisions = bucket_pairs(keys.ravel(), np.repeat(np.flatnonzero(live), bands))
    u, v = unique_pairs(u, v)
    return u, v, collisions


def near_duplicates(texts: list[str], ids: list[str], cfg: MinHashConfig) -> tuple[list[str | None], dict]:
    """In-memory near-dedup: `near_dup_of` per text (None for survivors) and the same stats as
    `mark_near_duplicates`. For benchmarks, tests and inputs that fit one process."""
    hashes, offsets = shingle_hashes(texts, cfg.ngram_size)
    stats = describe(cfg)
    u, v, collisions = candidate_pairs(hashes, offsets, cfg)
    stats.update(bucket_collisions=collisions, candidate_pairs=len(u))
    if cfg.verify_jaccard:
        keep = pair_jaccard(hashes, offsets, u, v) >= cfg.threshold
        u, v = u[keep], v[keep]
        stats["verified_pairs"] = len(u)
    by_id = np.argsort(np.asarray(ids, dtype=object), kind="stable")  # node r is the r-th smallest id
    rank = np.empty(len(ids), dtype=np.int64)
    rank[by_id] = np.arange(len(ids))
    label = components(len(ids), rank[u], rank[v])
    stats["clusters"], stats["cluster_sizes"] = cluster_stats(label)
    dup_of = [None if label[r] == r else ids[by_id[label[r]]] for r in rank.tolist()]
    stats["duplicates"] = sum(d is not None for d in dup_of)
    return dup_of, stats


IN_MEMORY_PAIRS = 20_000_000  # up to this many candidate pairs (~1.5 GB), components run in one task


def mark_near_duplicates(ds: ray.data.Dataset, cfg: MinHashConfig, text_col: str = "text", id_col: str = "id",
                         num_partitions: int | None = None) -> tuple[ray.data.Dataset, dict]:
    """Add a string column `near_dup_of` (null for survivors, else the smallest id of the document's
    near-duplicate cluster) and return the stats of `near_marks`. Row order is kept."""
    from jobs.data import lsh_ray, marks

    bands, rows = resolved_bands_rows(cfg)
    keyed = ds.map_batches(lsh_ray.add_band_keys, batch_format="pyarrow", fn_kwargs={
        "cfg": cfg, "bands": bands, "rows": rows, "text_col": text_col}).materialize()
    found, stats = near_marks(keyed, cfg, id_col=id_col, num_partitions=num_partitions)
    return marks.with_dup_column(keyed, marks.build(found), id_col, [lsh_ray.BANDS_COL], lsh_ray.OUT_COL), stats


def near_marks(keyed: ray.data.Dataset, cfg: MinHashConfig, text_col: str = "text", id_col: str = "id",
               exclude: list | None = None, num_partitions: int | None = None) -> tuple[ray.data.Dataset, dict]:
    """Marks (jobs.data.marks.SCHEMA) of the near duplicates among the rows of `keyed` (materialized, with band
    keys from lsh_ray.add_band_keys) that no mark in `exclude` rejects, and the LSH stats: bands, rows,
    S-curve, bucket collisions, candidate pairs, verified pairs (with verify_jaccard), clusters, cluster-size
    histogram, duplicates, component rounds."""
    import ray
    import ray.data

    from jobs.data import lsh_ray, marks
    from jobs.data.components import connected_components
    from jobs.data.dedup import partitions_for

    stats = describe(cfg)
    parts = partitions_for(keyed.count() * stats["bands"], num_partitions)
    empty = ray.data.from_arrow(marks.SCHEMA.empty_table())
    pairs, collisions = lsh_ray.candidate_pairs(keyed, id_col, exclude or [], parts)
    stats.update(bucket_collisions=collisions, candidate_pairs=0, component_rounds=0, clusters=0, cluster_sizes={},
                 duplicates=0, **({"verified_pairs": 0} if cfg.verify_jaccard else {}))  # fmt: skip
    if not collisions:
        return empty, stats
    if cfg.verify_jaccard:
        pairs = lsh_ray.distinct_pairs(pairs, parts)
        stats["candidate_pairs"] = pairs.count()
        pairs = lsh_ray.verified_pairs(keyed, pairs, cfg, text_col, id_col, parts)
        stats["verified_pairs"] = pairs.count()
        if not stats["verified_pairs"]:
            return empty, stats
    if pairs.count() <= IN_MEMORY_PAIRS:
        task = ray.remote(num_returns=2)(lsh_ray.components_in_one_task)
        found, counted = task.remote(pairs.to_arrow_refs())  # the marks stay in the object store
        counted = ray.get(counted)
        distinct = counted.pop("pairs")
        stats["candidate_pairs"] = stats["candidate_pairs"] or distinct
        stats.update(counted)
        return ray.data.from_arrow_refs([found]), stats
    if not cfg.verify_jaccard:
        stats["candidate_pairs"] = lsh_ray.distinct_pairs(pairs, parts).count()
    members, stats["component_rounds"] = connected_components(pairs, parts)
    members = members.materialize()
    stats["clusters"], stats["cluster_sizes"] = lsh_ray.cluster_histogram(members)
    stats["duplicates"] = members.count()
    return lsh_ray.star_marks(members).materialize(), stats

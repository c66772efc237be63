"""Cluster-wide parts of near-dedup on the session Ray cluster: connected components and the full marking,
on datasets split into several blocks so that members of one cluster start in different blocks."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from jobs.data.components import connected_components, large_star, small_star
from jobs.data.minhash import components, mark_near_duplicates, near_duplicates
from pipelines.spec.curation import MinHashConfig


def _group(node: str, nbrs: list[str]) -> pa.Table:
    return pa.table({"node": [node] * len(nbrs), "nbr": nbrs})


def test_large_star_links_larger_neighbours_to_the_minimum():
    out = large_star(_group("c", ["a", "d", "e", "c"]))
    rows = sorted(zip(out["u"].to_pylist(), out["v"].to_pylist(), out["bad"].to_pylist(), strict=True))
    assert rows == [("a", "d", 0), ("a", "e", 0), ("c", "c", 1)]  # c is neither root nor leaf: not final yet
    root = large_star(_group("a", ["c", "b", "b"]))
    assert sorted(zip(root["v"].to_pylist(), root["size"].to_pylist(), strict=True)) == [("b", 3), ("c", 0)]
    final = large_star(_group("b", ["a"]))
    assert final.num_rows == 0  # a leaf with one smaller neighbour emits nothing and is final


def test_small_star_links_smaller_neighbours_to_their_minimum():
    out = small_star(_group("d", ["b", "a", "e"]))
    assert sorted(zip(out["u"].to_pylist(), out["v"].to_pylist(), strict=True)) == [("a", "b"), ("a", "d")]


def _random_graph(rng: random.Random) -> tuple[list[str], list[tuple[str, str]]]:
    """A long path (diameter 40), a cycle, a star and random sparse edges, on shuffled names."""
    names = [f"n{i:03d}" for i in range(200)]
    rng.shuffle(names)
    edges = [(names[i], names[i + 1]) for i in range(40)]
    edges += [(names[50 + i], names[50 + (i + 1) % 10]) for i in range(10)]
    edges += [(names[70], names[71 + i]) for i in range(15)]
    edges += [(names[rng.randrange(90, 200)], names[rng.randrange(90, 200)]) for _ in range(60)]
    return names, edges


@pytest.mark.cluster
def test_connected_components_match_numpy_across_blocks(ray_session):
    import ray.data

    names, edges = _random_graph(random.Random(0))
    ds = ray.data.from_items([{"u": min(e), "v": max(e)} for e in edges], override_num_blocks=7)
    members, rounds = connected_components(ds, partitions=2)
    rows = members.take_all()
    got = {r["v"]: r["u"] for r in rows}

    order = sorted(names)
    index = {n: i for i, n in enumerate(order)}
    u = np.array([index[a] for a, _ in edges])
    v = np.array([index[b] for _, b in edges])
    label = components(len(order), u, v)
    expect = {order[i]: order[label[i]] for i in range(len(order)) if label[i] != i}
    assert got == expect
    assert sum(r["size"] for r in rows) == len(expect) + len(set(expect.values()))  # one size row per root
    assert rounds > 1  # the path needs several rounds: convergence was really tested


def _planted(rng: random.Random) -> tuple[list[dict], dict[str, str | None]]:
    """40 unique docs and 8 clusters of 4 near-copies (1 word in 250 changed); ids shuffled so every cluster
    is spread over the blocks."""
    texts, truth = [], []
    for c in range(48):
        words = [f"w{rng.randrange(100_000)}" for _ in range(250)]
        copies = 4 if c < 8 else 1
        for k in range(copies):
            variant = list(words)
            if k:
                variant[rng.randrange(250)] = f"edit{k}"
            texts.append(" ".join(variant))
            truth.append(c if copies > 1 else None)
    ids = [f"doc{i:03d}" for i in rng.sample(range(1000), len(texts))]
    rows = [{"id": i, "text": t, "source": "test"} for i, t in zip(ids, texts, strict=True)]
    rng.shuffle(rows)
    by_cluster: dict[int, list[str]] = {}
    for i, c in zip(ids, truth, strict=True):
        if c is not None:
            by_cluster.setdefault(c, []).append(i)
    expected: dict[str, str | None] = {i: None for i in ids}
    for members in by_cluster.values():
        for i in members:
            expected[i] = None if i == min(members) else min(members)
    return rows, expected


@pytest.mark.cluster
def test_mark_near_duplicates_multi_block(ray_session):
    import ray.data

    rows, expected = _planted(random.Random(5))
    ds = ray.data.from_items(rows, override_num_blocks=6)
    blocks = [b["id"].to_pylist() for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")]
    assert len(blocks) == 6
    cfg = MinHashConfig(verify_jaccard=True)
    marked, stats = mark_near_duplicates(ds, cfg, num_partitions=2)
    out = marked.take_all()
    assert {r["id"]: r["near_dup_of"] for r in out} == expected
    assert {r["source"] for r in out} == {"test"} and len(out) == len(rows)
    assert stats["clusters"] == 8 and stats["cluster_sizes"] == {4: 8} and stats["duplicates"] == 24
    assert stats["candidate_pairs"] >= stats["verified_pairs"] >= 24  # at least a spanning tree per cluster
    assert stats["bands"] * stats["rows"] <= cfg.num_perm and "0.8" in stats["s_curve"]
    # the clusters really were spread: their members started in different blocks
    block_of = {i: b for b, ids in enumerate(blocks) for i in ids}
    roots = {r for r in expected.values() if r}
    spans = [{block_of[i] for i, r in expected.items() if r == root} | {block_of[root]} for root in roots]
    assert sum(len(s) > 1 for s in spans) >= 6
    local, local_stats = near_duplicates([r["text"] for r in rows], [r["id"] for r in rows], cfg)
    assert dict(zip([r["id"] for r in rows], local, strict=True)) == expected
    assert local_stats["candidate_pairs"] == stats["candidate_pairs"]


@pytest.mark.cluster
def test_mark_near_duplicates_without_candidates(ray_session):
    import ray.data

    ds = ray.data.from_items([{"id": f"x{i}", "text": f"entirely different words number {i} " * 3} for i in range(5)])
    marked, stats = mark_near_duplicates(ds, MinHashConfig(), num_partitions=2)
    assert [r["near_dup_of"] for r in marked.take_all()] == [None] * 5
    assert stats["candidate_pairs"] == 0 and stats["clusters"] == 0 and "verified_pairs" not in stats

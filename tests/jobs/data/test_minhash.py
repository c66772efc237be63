"""MinHash engine: shingle hashing, signatures, LSH parameters and the S-curve, in-memory near-dedup."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch.lsh import _optimal_param

from jobs.data.minhash import (
    EMPTY,
    band_keys,
    bucket_pairs,
    components,
    near_duplicates,
    permutations,
    signatures,
    signatures_from_hashes,
)
from jobs.data.shingle_hash import shingle_hashes
from jobs.data.text import jaccard, normalize, shingles
from pipelines.lsh import describe, lsh_params, s_curve
from pipelines.spec.curation import MinHashConfig


def _doc(rng: random.Random, n: int = 120) -> str:
    return " ".join(f"w{rng.randrange(5000)}" for _ in range(n))


def test_shingle_hashes_match_string_shingles():
    rng = random.Random(0)
    texts = [_doc(rng, rng.randint(0, 40)) for _ in range(200)] + ["", "One, two!", "Ünïcödé ﬁne text, here."]
    hashes, offsets = shingle_hashes(texts, 3)
    seen: dict[str, int] = {}
    for i, text in enumerate(texts):
        words = normalize(text).split()
        expect = [" ".join(words[k : k + 3]) for k in range(len(words) - 2)] or ([" ".join(words)] if words else [])
        got = hashes[offsets[i] : offsets[i + 1]].tolist()
        assert len(got) == len(expect) and len(set(got)) == len(shingles(text, 3))
        for s, h in zip(expect, got, strict=True):
            assert seen.setdefault(s, h) == h  # the same shingle hashes the same in every document


def test_hashing_in_slices_changes_nothing(monkeypatch):
    import jobs.data.shingle_hash as sh

    rng = random.Random(5)
    texts = [_doc(rng, rng.randint(0, 300)) for _ in range(100)]
    whole, whole_off = shingle_hashes(texts, 5)
    monkeypatch.setattr(sh, "MAX_BUFFER_BYTES", 2000)  # forces ~30 slices, some of a single document
    sliced, sliced_off = shingle_hashes(texts, 5)
    assert np.array_equal(whole, sliced) and np.array_equal(whole_off, sliced_off)
    assert shingle_hashes([], 5)[1].tolist() == [0]


def test_signatures_equal_the_definition():
    texts = ["the quick brown fox jumps over the lazy dog again and again", "", "tiny"]
    hashes, offsets = shingle_hashes(texts, 2)
    sig = signatures_from_hashes(hashes, offsets, 16, seed=7)
    a, b = permutations(16, 7)
    for i in range(len(texts)):
        xs = [int(h) >> 32 for h in hashes[offsets[i] : offsets[i + 1]]]
        perms = zip(a.tolist(), b.tolist(), strict=True)
        expect = [min(((aj * x + bj) % 2**32 for x in xs), default=int(EMPTY)) for aj, bj in perms]
        assert sig[i].tolist() == expect


def test_long_document_and_chunking_agree():
    rng = random.Random(1)
    long_doc = _doc(rng, 20_000)  # longer than one chunk of shingles
    cfg = MinHashConfig()
    together = signatures([long_doc, "a b c d e f", long_doc], cfg)
    assert (together[0] == together[2]).all()
    assert (together[0] == signatures([long_doc], cfg)[0]).all()


def test_signature_agreement_estimates_jaccard():
    rng = random.Random(2)
    base = _doc(rng, 300).split()
    other = list(base)
    for i in rng.sample(range(300), 30):
        other[i] = f"x{i}"
    a, b = " ".join(base), " ".join(other)
    cfg = MinHashConfig(num_perm=512, ngram_size=3)
    sig = signatures([a, b], cfg)
    true_j = jaccard(shingles(a, 3), shingles(b, 3))
    estimate = (sig[0] == sig[1]).mean()
    assert abs(estimate - true_j) < 4 * np.sqrt(true_j * (1 - true_j) / 512)


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
@pytest.mark.parametrize("num_perm", [64, 128, 256])
def test_lsh_params_match_datasketch(threshold, num_perm):
    bands, rows = lsh_params(threshold, num_perm)
    assert bands * rows <= num_perm
    assert (bands, rows) == _optimal_param(threshold, num_perm, 0.5, 0.5)


def test_describe_prints_the_s_curve():
    info = describe(MinHashConfig(bands=20, rows=5, num_perm=100))
    assert (info["bands"], info["rows"]) == (20, 5)
    assert info["s_curve"]["0.5"] == pytest.approx(1 - (1 - 0.5**5) ** 20, abs=1e-4)
    assert info["s_curve"]["1.0"] == 1.0 and list(info["s_curve"]) == ["0.5", "0.6", "0.7", "0.8", "0.9", "1.0"]


def _pairs_with_jaccard(s: float, n_pairs: int, union: int = 100) -> tuple[list[str], list[str]]:
    """Pairs of texts whose unigram shingle sets have Jaccard exactly s: shared words plus private words."""
    shared = round(s * union)
    own = (union - shared) // 2
    assert (union - shared) % 2 == 0
    left, right = [], []
    for p in range(n_pairs):
        common = [f"p{p}s{k}" for k in range(shared)]
        left.append(" ".join(common + [f"p{p}a{k}" for k in range(own)]))
        right.append(" ".join(common + [f"p{p}b{k}" for k in range(own)]))
    return left, right


def test_candidate_rate_follows_the_s_curve():
    """A statistical test of the whole LSH: with 1500 pairs per similarity the binomial sd is <= 0.013, so the
    measured candidate rate must sit within 0.05 of 1-(1-s^r)^b at every s."""
    cfg = MinHashConfig(ngram_size=1, num_perm=128, threshold=0.7, seed=3)
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
    for s in (0.5, 0.6, 0.7, 0.8, 0.9):
        left, right = _pairs_with_jaccard(s, 1500)
        assert jaccard(shingles(left[0], 1), shingles(right[0], 1)) == pytest.approx(s)
        keys_l = band_keys(signatures(left, cfg), bands, rows)
        keys_r = band_keys(signatures(right, cfg), bands, rows)
        measured = (keys_l == keys_r).any(axis=1).mean()
        assert abs(measured - s_curve(s, bands, rows)) <= 0.05, (s, measured, s_curve(s, bands, rows))


def test_bucket_pairs_all_pairs_and_stars():
    keys = np.array([5, 5, 5, 9, 9, 7], dtype=np.uint64)
    docs = np.array([3, 1, 2, 4, 0, 6])
    u, v, collisions = bucket_pairs(keys, docs)
    assert sorted(zip(u.tolist(), v.tolist(), strict=True)) == [(0, 4), (1, 2), (1, 3), (2, 3)]
    assert collisions == 4
    big = np.zeros(100, dtype=np.uint64)
    u, v, collisions = bucket_pairs(big, np.arange(100)[::-1].copy())
    assert collisions == 4950 and len(u) == 99 and set(u.tolist()) == {0}  # a star around the smallest doc


def test_components_numpy():
    u = np.array([5, 1, 2, 7, 9])
    v = np.array([4, 2, 3, 8, 8])
    assert components(10, u, v).tolist() == [0, 1, 1, 1, 4, 4, 6, 7, 7, 7]


def test_near_duplicates_in_memory():
    rng = random.Random(4)
    base = [_doc(rng, 200) for _ in range(20)]
    texts, ids = list(base), [f"b{i:02d}" for i in range(20)]
    for i in range(5):  # a near copy (1 word in 200 changed) of each of the first 5, with a smaller id
        words = base[i].split()
        words[100] = "changed"
        texts.append(" ".join(words))
        ids.append(f"a{i:02d}")
    dup_of, stats = near_duplicates(texts, ids, MinHashConfig())
    for i in range(20):
        assert dup_of[i] == (f"a{i:02d}" if i < 5 else None)
    assert dup_of[20:] == [None] * 5
    assert stats["clusters"] == 5 and stats["cluster_sizes"] == {2: 5} and stats["duplicates"] == 5
    assert stats["candidate_pairs"] == 5


def test_verify_jaccard_removes_lsh_false_positives():
    left, right = _pairs_with_jaccard(0.6, 40)
    texts, ids = left + right, [f"l{i:03d}" for i in range(40)] + [f"r{i:03d}" for i in range(40)]
    loose = dict(ngram_size=1, num_perm=128, bands=32, rows=4, threshold=0.8)  # J=0.6 pairs collide ~98%
    _, plain = near_duplicates(texts, ids, MinHashConfig(**loose))
    dup_of, verified = near_duplicates(texts, ids, MinHashConfig(**loose, verify_jaccard=True))
    assert plain["duplicates"] >= 35
    assert verified["candidate_pairs"] == plain["candidate_pairs"] and verified["verified_pairs"] == 0
    assert dup_of == [None] * 80

"""Vectorized hashing of word n-gram shingles: numpy passes over the bytes of a whole batch of documents.

Each document's normalized UTF-8 bytes (jobs.data.text.normalized_bytes: punctuation gone, whitespace not yet
collapsed) are joined into one buffer. Words are the runs of non-whitespace bytes. A polynomial prefix sum over the
buffer, P[i] = sum_{k<i} c_k * B^k (mod 2^64), gives every word's hash as (P[e] - P[s]) * B^-s with array
arithmetic; a shingle's hash combines its n word hashes as sum_k w_{i+k} * R^k, so it depends on the words only,
not on the spaces between them, and no Python loop runs over words or shingles. Arithmetic mod 2^64 is the point
(B and R are odd, hence invertible): numpy's uint64 wraparound is the modular reduction, not an overflow bug.
splitmix64's finalizer scrambles word and shingle values.
"""

from __future__ import annotations

import numpy as np

from jobs.data.text import normalized_bytes

_BASE = 0x9E3779B97F4A7C15 | 1  # odd, so it has an inverse mod 2^64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_WORD_BASE = 0xD6E8FEB86659FD93  # R: odd; a shingle's k-th word is weighted by R^k
_powers: dict[str, np.ndarray] = {}


def _power_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    """B^i and B^-i mod 2^64 for i < n, cached and grown geometrically across batches."""
    if len(_powers.get("pow", ())) < n:
        size = max(n, 2 * len(_powers.get("pow", ())), 1 << 16)
        for key, base in (("pow", _BASE), ("inv", _BASE_INV)):
            table = np.full(size, base, dtype=np.uint64)
            table[0] = 1
            _powers[key] = np.cumprod(table, dtype=np.uint64)
    return _powers["pow"][:n], _powers["inv"][:n]


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (Steele et al. 2014): a bijection of uint64 with full avalanche."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _word_spans(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Byte start and end of every word: maximal runs of non-whitespace bytes. Normalized bytes hold no ASCII
    control character but whitespace (the others are punctuation to `normalize`), so a word byte is one above 32."""
    word = buf > 32
    edges = np.diff(np.concatenate(([False], word, [False])).view(np.int8))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _word_hashes(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """One 64-bit value per word: the bytes' polynomial hash from the prefix sum, mixed with the word's length."""
    pw, inv = _power_table(len(buf))
    prefix = np.empty(len(buf) + 1, dtype=np.uint64)
    prefix[0] = 0
    np.multiply(buf, pw, out=prefix[1:], dtype=np.uint64)
    np.cumsum(prefix[1:], out=prefix[1:])
    return mix64(((prefix[end] - prefix[start]) * inv[start]) ^ (end - start).astype(np.uint64))


def _shingle_spans(words_per_doc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First word and word count of every shingle, and the shingle offsets per document.

    A document with m >= n words has m-n+1 shingles; one with 0 < m < n words is a single shingle of all
    its words (so short documents can still match); an empty document has none."""
    counts = np.where(words_per_doc >= n, words_per_doc - n + 1, np.minimum(words_per_doc, 1))
    offsets = np.concatenate(([0], np.cumsum(counts)))
    first_word = np.cumsum(words_per_doc) - words_per_doc
    doc = np.repeat(np.arange(len(counts)), counts)
    start = first_word[doc] + np.arange(offsets[-1]) - offsets[doc]
    return start, np.minimum(n, words_per_doc[doc]), offsets


def _combine(word_hash: np.ndarray, first: np.ndarray, size: np.ndarray, n: int) -> np.ndarray:
    """sum_k word_hash[first + k] * R^k over each shingle's words, mixed with its size. A shingle of a document
    shorter than n words repeats its last word to fill n places (the size keeps it apart from a real repeat)."""
    last = first + size - 1
    total = word_hash[first].copy()
    for k in range(1, n):
        total += word_hash[np.minimum(first + k, last)] * np.uint64(pow(_WORD_BASE, k, 1 << 64))
    return mix64(total ^ size.astype(np.uint64))


MAX_BUFFER_BYTES = 8 << 20  # texts are hashed in slices of about this size: the power tables stay small


def shingle_hashes(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the word n-gram shingles of every text, and offsets: doc i owns hashes[off[i]:off[i+1]].

    Equal shingles (as jobs.data.text.shingles builds them: the same n normalized words) get equal hashes."""
    data = [normalized_bytes(t) for t in texts]
    sizes = np.cumsum([len(d) + 1 for d in data])
    parts, offsets, start = [], [np.zeros(1, dtype=np.int64)], 0
    while start < len(data):
        base = sizes[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(sizes, base + MAX_BUFFER_BYTES, side="right")))
        hashes, off = _hash_slice(data[start:stop], n)
        parts.append(hashes)
        offsets.append(off[1:] + offsets[-1][-1])
        start = stop
    empty = np.zeros(0, dtype=np.uint64)
    return (np.concatenate(parts) if parts else empty), np.concatenate(offsets)


def _hash_slice(data: list[bytes], n: int) -> tuple[np.ndarray, np.ndarray]:
    buf = np.frombuffer(b" ".join(data), dtype=np.uint8)
    word_start, word_end = _word_spans(buf)
    doc_end = np.cumsum([len(d) + 1 for d in data])  # each document's bytes and the space after it
    words_per_doc = np.bincount(np.searchsorted(doc_end, word_start, side="right"), minlength=len(data))
    first, size, offsets = _shingle_spans(words_per_doc, n)
    return _combine(_word_hashes(buf, word_start, word_end), first, size, n), offsets

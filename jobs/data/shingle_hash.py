"""Vectorized hashing of word n-gram shingles: one numpy pass over the bytes of a whole batch of documents.

The batch's normalized texts are joined into one byte buffer. A polynomial prefix sum over the buffer,
P[i] = sum_{k<i} c_k * B^k (mod 2^64), gives the hash of any byte span [s, e) as (P[e] - P[s]) * B^-s, so all
shingles of all documents are hashed with array arithmetic and no Python loop over shingles or words.
Arithmetic mod 2^64 is the point here (B is odd, hence invertible mod 2^64): numpy's uint64 wraparound is
the modular reduction, not an overflow bug. A splitmix64 finalizer then scrambles the polynomial value.
"""

from __future__ import annotations

import numpy as np

from jobs.data.text import normalize

_BASE = 0x9E3779B97F4A7C15 | 1  # odd, so it has an inverse mod 2^64
_BASE_INV = pow(_BASE, -1, 1 << 64)
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
    """Byte start and end of every word; words are separated by single spaces, documents end with a newline."""
    sep = (buf == 32) | (buf == 10)
    prev_sep = np.concatenate(([True], sep[:-1]))
    next_sep = np.concatenate((sep[1:], [True]))
    return np.flatnonzero(~sep & prev_sep), np.flatnonzero(~sep & next_sep) + 1


def _shingle_spans(words_per_doc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first word, last word) of every shingle and the shingle offsets per document.

    A document with m >= n words has m-n+1 shingles; one with 0 < m < n words is a single shingle of all
    its words (so short documents can still match); an empty document has none."""
    counts = np.where(words_per_doc >= n, words_per_doc - n + 1, np.minimum(words_per_doc, 1))
    offsets = np.concatenate(([0], np.cumsum(counts)))
    first_word = np.cumsum(words_per_doc) - words_per_doc
    doc = np.repeat(np.arange(len(counts)), counts)
    k = np.arange(offsets[-1]) - offsets[doc]
    start = first_word[doc] + k
    end = start + np.minimum(n, words_per_doc[doc]) - 1
    return start, end, offsets


MAX_BUFFER_BYTES = 8 << 20  # texts are hashed in slices of about this size: the power tables stay small


def shingle_hashes(texts: list[str], n: int, normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the word n-gram shingles of every text, and offsets: doc i owns hashes[off[i]:off[i+1]].

    Equal shingle strings (as jobs.data.text.shingles builds them) get equal hashes."""
    norm = texts if normalized else [normalize(t) for t in texts]
    sizes = np.cumsum([len(t) + 1 for t in norm])
    parts, offsets, start = [], [np.zeros(1, dtype=np.int64)], 0
    while start < len(norm):
        base = sizes[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(sizes, base + MAX_BUFFER_BYTES, side="right")))
        hashes, off = _hash_slice(norm[start:stop], n)
        parts.append(hashes)
        offsets.append(off[1:] + offsets[-1][-1])
        start = stop
    empty = np.zeros(0, dtype=np.uint64)
    return (np.concatenate(parts) if parts else empty), np.concatenate(offsets)


def _hash_slice(norm: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    buf = np.frombuffer(("\n".join(norm) + "\n").encode("utf-8"), dtype=np.uint8)
    word_start, word_end = _word_spans(buf)
    newlines = np.flatnonzero(buf == 10)  # normalized text has no newline: exactly one per document
    words_per_doc = np.bincount(np.searchsorted(newlines, word_start), minlength=len(norm))
    first, last, offsets = _shingle_spans(words_per_doc, n)
    pw, inv = _power_table(len(buf) + 1)
    prefix = np.concatenate(([np.uint64(0)], np.cumsum((buf.astype(np.uint64) + np.uint64(1)) * pw[:-1])))
    s, e = word_start[first], word_end[last]
    poly = (prefix[e] - prefix[s]) * inv[s]
    return mix64(poly ^ (e - s).astype(np.uint64)), offsets

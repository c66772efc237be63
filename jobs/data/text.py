"""Text normalization shared by exact dedup and MinHash shingling.

Two documents that differ only in Unicode form, case, punctuation or spacing are the same document for
deduplication, so keys and shingles are computed on `normalize(text)`, never on the raw text.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# \w keeps letters, digits and underscore in every script; everything else that is not whitespace
# (punctuation and symbols) is removed so "Hello, world!" and "hello world" share a key.
_PUNCT = re.compile(r"[^\w\s]|_")
# The same set for ASCII, as bytes: the fast path below deletes them with bytes.translate (C speed, ~5x faster
# than the regex), and it is the hot loop of dedup.
_ASCII_PUNCT = bytes(c for c in range(128) if not (chr(c).isalnum() or chr(c).isspace()) or chr(c) == "_")


def normalize(text: str) -> str:
    """NFKC, lowercase, punctuation removed, whitespace runs collapsed to one space, ends stripped."""
    text = text or ""
    if text.isascii():  # NFKC leaves ASCII unchanged
        return " ".join(text.lower().encode("ascii").translate(None, _ASCII_PUNCT).decode("ascii").split())
    return _normalize_unicode(text)


def _normalize_unicode(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT.sub("", text).split())


def dedup_key(text: str) -> str:
    """128-bit hex digest of the normalized text: equal keys mean exact duplicates (collisions ~2^-64)."""
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).hexdigest()


def words(normalized: str) -> list[str]:
    """Words of already-normalized text."""
    return normalized.split()


def shingles(text: str, n: int) -> set[str]:
    """Word n-grams of the normalized text; a text shorter than n words is one shingle (or none if empty)."""
    tokens = words(normalize(text))
    if not tokens:
        return set()
    if len(tokens) < n:
        return {" ".join(tokens)}
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity of two sets; two empty sets are identical (1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)

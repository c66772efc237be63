"""Text normalization shared by exact dedup and MinHash shingling.

Two documents that differ only in Unicode form, case, punctuation or spacing are the same document for
deduplication, so keys and shingles are computed on `normalize(text)`, never on the raw text.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache

# \w keeps letters, digits and underscore in every script; everything else that is not whitespace
# (punctuation and symbols) is removed so "Hello, world!" and "hello world" share a key.
_PUNCT = re.compile(r"[^\w\s]|_")
# The same set for ASCII, as bytes: normalized_bytes deletes them with bytes.translate (C speed, ~5x faster than
# the regex), and it is the hot loop of dedup. _PUNCT itself stays as the definition the tests check against.
_ASCII_PUNCT = bytes(c for c in range(128) if not (chr(c).isalnum() or chr(c).isspace()) or chr(c) == "_")


def normalize(text: str) -> str:
    """NFKC, lowercase, punctuation removed, whitespace runs collapsed to one space, ends stripped."""
    return " ".join(normalized_bytes(text).decode("utf-8").split())


def normalized_bytes(text: str) -> bytes:
    """`normalize` before its whitespace is collapsed, as UTF-8: words separated by runs of ASCII whitespace.
    The hashing of shingles reads words straight from these bytes and never builds the joined string."""
    text = text or ""
    if text.isascii():  # NFKC leaves ASCII unchanged; one translate lowercases and drops punctuation
        return text.encode("ascii").translate(_ASCII_LOWER, _ASCII_PUNCT)
    text = unicodedata.normalize("NFKC", text)
    if "Σ" in text:  # the one context-dependent lowercase mapping (final sigma): the whole text's lower() decides
        text = text.lower()
    # Non-ASCII runs are lowercased and cleaned (cached per distinct run); ASCII letters are lowercased and ASCII
    # punctuation dropped by one translate of the UTF-8 bytes (an ASCII byte is never part of a multi-byte character).
    return _NON_ASCII_RUN.sub(_clean_run, text).encode("utf-8").translate(_ASCII_LOWER, _ASCII_PUNCT)


def _clean_run(match: re.Match) -> str:
    """A run of non-ASCII characters without its punctuation and symbols, its whitespace as spaces."""
    return _clean_chars(match.group())


@lru_cache(maxsize=65536)
def _clean_chars(run: str) -> str:
    """The run lowercased, its punctuation and symbols dropped, its whitespace as spaces."""
    return "".join(" " if kind == "space" else ch for ch in run.lower() if (kind := _unicode_kind(ch)) != "punct")


_ASCII_LOWER = bytes(range(256)).lower()


_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")


@lru_cache(maxsize=65536)
def _unicode_kind(ch: str) -> str:
    """'space' for whitespace (NBSP survives NFKC as a space already; U+2028 does not), 'punct' for punctuation and
    symbols (what `[^\\w\\s]` matches), '' for a word character."""
    if ch.isspace():
        return "space"
    return "" if ch.isalnum() else "punct"


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

"""A long-document corpus for bench/dedup.py that needs no download: real text already on any Python machine.

Base documents are the installed packages' METADATA files (their READMEs: prose, tables, code samples) and the
standard library's modules, each at least 4 KB and cut at 60 KB, exact copies removed. Near-duplicates are
planted by word edits at known rates: a copy of a base document where each word is, with probability `rate`,
deleted, replaced by a random word of the corpus, or followed by one. Ground truth is not taken from the plan
but by brute-force Jaccard over all pairs (bench.dedup.true_pairs), which also finds the near-duplicates the real
text already holds (packages that share a README).
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
import sys
import sysconfig

# Per-word edit rates of the planted copies. A 5-gram survives an edit rate r with probability s ~ (1-r)^5 and a
# copy's Jaccard with its source is about s / (2 - s): ~0.99, 0.98 and 0.95 for the first three (near-duplicates at
# threshold 0.8, also of each other) and ~0.38 and 0.2 for the last two (edited beyond it). bench/dedup.py reports
# how many pairs lie near the threshold, where any MinHash-LSH is a coin toss.
EDIT_RATES = (0.001, 0.002, 0.005, 0.1, 0.2)


def base_documents(min_bytes: int = 4096, max_bytes: int = 60_000) -> list[str]:
    site = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
    paths = sorted(glob.glob(os.path.join(site, "*.dist-info", "METADATA")))
    paths += sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    texts, seen = [], set()
    for path in paths:
        if os.path.getsize(path) < min_bytes:
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(max_bytes)
        digest = hashlib.sha1(text.encode()).digest()
        if digest not in seen:
            seen.add(digest)
            texts.append(text)
    return texts


def edited(text: str, rate: float, vocabulary: list[str], rng: random.Random) -> str:
    out = []
    for word in text.split(" "):
        roll = rng.random()
        if roll < rate / 3:
            continue  # deleted
        out.append(rng.choice(vocabulary) if roll < 2 * rate / 3 else word)
        if 2 * rate / 3 <= roll < rate:
            out.append(rng.choice(vocabulary))  # inserted after it
    return " ".join(out)


def long_corpus(copies_of: float = 0.5, max_copies: int = 3, seed: int = 0) -> list[str]:
    """Base documents plus, for a `copies_of` share of them, 1..max_copies edited copies; shuffled."""
    rng = random.Random(seed)
    base = base_documents()
    vocabulary = sorted({w for t in base[:50] for w in t.split()})
    docs = list(base)
    for text in base:
        if rng.random() < copies_of:
            docs += [edited(text, rng.choice(EDIT_RATES), vocabulary, rng) for _ in range(rng.randint(1, max_copies))]
    rng.shuffle(docs)
    return docs

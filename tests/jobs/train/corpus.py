"""A small synthetic corpus for training tests: template sentences, so a tiny model's loss falls quickly."""

from __future__ import annotations

import os
import random

ADJECTIVES = ["quick", "lazy", "red", "small", "happy", "old", "bright", "quiet"]
NOUNS = ["fox", "dog", "cat", "bird", "farmer", "river", "tree", "child"]
VERBS = ["jumps over", "looks at", "runs past", "sleeps near", "sings to", "walks with"]


def sentence(rng: random.Random) -> str:
    a, b = rng.sample(NOUNS, 2)
    return f"The {rng.choice(ADJECTIVES)} {a} {rng.choice(VERBS)} the {rng.choice(ADJECTIVES)} {b}."


def documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(sentence(rng) for _ in range(rng.randint(3, 8))) for _ in range(n)]


def write_parquet(directory: str, n_docs: int, shards: int = 2, seed: int = 0) -> str:
    """Write `<directory>/data/part-*.parquet` (columns id, text) like the data stage does; returns `directory`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = documents(n_docs, seed)
    os.makedirs(os.path.join(directory, "data"), exist_ok=True)
    for shard in range(shards):
        rows = list(range(shard, n_docs, shards))
        table = pa.table({"id": [f"doc-{i}" for i in rows], "text": [docs[i] for i in rows]})
        pq.write_table(table, os.path.join(directory, "data", f"part-{shard:05d}.parquet"))
    return directory

"""A deterministic, self-generated English-like corpus with planted problems, for demos and tests.

`write_demo_corpus(out_dir)` writes `part-*.jsonl` ({"id", "text"} per line) plus `manifest.json` (what was
planted, as counts, and what the default `data` stage is expected to do with it) and `labels.json` (the
kind of every line, with the true shingle Jaccard of each planted near-duplicate). No downloads.

    python -m jobs.demo.corpus OUT_DIR [--n-docs 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from typing import Any

from jobs.data.text import jaccard, normalize, shingles
from jobs.demo import pii_samples as pii
from jobs.demo.vocab import ADJECTIVES, NOUNS, SLOTS, TEMPLATES

NEAR_DUP_EDIT_RATES = (0.0025, 0.005)  # J >= ~0.95 on 5-gram shingles: caught by the default MinHash settings
NEAR_MISS_EDIT_RATES = (0.2, 0.35)  # J <= ~0.3: different documents that must both be kept
SHINGLE_N = 5
MALFORMED_KINDS = ("bad_json", "invalid_utf8", "missing_text", "empty_text")


def sentence(rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    out, rest = [], template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        slot, _, rest = tail.partition("}")
        out.extend([head, rng.choice(SLOTS[slot])])
    text = "".join(out) + rest
    return text[0].upper() + text[1:]


def document(rng: random.Random, n_sentences: int) -> str:
    """Paragraphs (one line each, blank line between) of 2-5 template sentences, drawn again while some word 5-gram
    repeats: templates share phrases, and a page that repeats itself is what Gopher's repetition rules drop, so a
    document planted as clean must not (at a million documents, some draws would)."""
    while True:
        paragraphs, left = [], n_sentences
        while left > 0:
            k = min(left, rng.randint(2, 5))
            paragraphs.append(" ".join(sentence(rng) for _ in range(k)))
            left -= k
        text = "\n\n".join(paragraphs)
        if not _repeats_a_5gram(text):
            return text


def _repeats_a_5gram(text: str) -> bool:
    words = normalize(text).split()
    grams = list(zip(words, words[1:], words[2:], words[3:], words[4:], strict=False))
    return len(set(grams)) < len(grams)


def normal_doc(rng: random.Random) -> str:
    return document(rng, rng.randint(9, 16))


def _edit(rng: random.Random, text: str, rate: float) -> tuple[str, int]:
    """Substitute round(rate * words) lowercase words, at positions at least one shingle apart when possible."""
    tokens = text.split(" ")
    k = max(1, round(rate * len(tokens)))
    candidates = [i for i, t in enumerate(tokens) if t.isalpha() and t.islower()]
    spacing = SHINGLE_N if k * SHINGLE_N < len(candidates) else 1
    picked: list[int] = []
    for i in rng.sample(candidates, len(candidates)):
        if len(picked) == k:
            break
        if all(abs(i - j) >= spacing for j in picked):
            picked.append(i)
    for i in picked:
        options = [w for w in NOUNS + ADJECTIVES if w != tokens[i]]
        tokens[i] = rng.choice(options)
    return " ".join(tokens), len(picked)


def _variant(rng: random.Random, base: str, rate: float, kind: str, group: int) -> dict[str, Any]:
    text, edits = _edit(rng, base, rate)
    words = len(base.split())
    true_j = jaccard(shingles(base, SHINGLE_N), shingles(text, SHINGLE_N))
    return {"kind": kind, "text": text, "group": group, "target_edit_rate": rate,
            "edit_rate": round(edits / words, 4), "jaccard": true_j}


def _lsh_candidates(a: str, b: str) -> bool:
    """Whether the default MinHash-LSH settings pair a and b. At J ~0.95 about 1 pair in 700 shares no band, so
    a planted near-duplicate is drawn again until it does: the planted count is then what the stage must find
    at every corpus size (LSH recall on real text is bench/dedup.py's business, not the demo's)."""
    from jobs.data.minhash import band_keys, signatures
    from pipelines.lsh import resolved_bands_rows
    from pipelines.spec.curation import MinHashConfig

    cfg = MinHashConfig()
    keys = band_keys(signatures([a, b], cfg), *resolved_bands_rows(cfg))
    return bool((keys[0] == keys[1]).any())


def _exact_copy(rng: random.Random, text: str) -> str:
    """Same normalized text, different bytes: case, spacing or a trailing mark changes."""
    style = rng.randrange(3)
    if style == 0:
        return text
    if style == 1:
        return text.replace(". ", ".  ").upper()
    return text + "  !"


def _low_quality(rng: random.Random, kind: str) -> str:
    """Documents the default quality filters must drop; each kind trips a different family of rules."""
    a, n = rng.choice(ADJECTIVES), rng.choice(NOUNS)
    if kind == "too_short":
        return f"Click here to see the {a} {n}."
    if kind == "bullets":
        return "\n".join(f"- {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} sale" for _ in range(25))
    if kind == "repeated_lines":
        line = sentence(rng)
        return "\n".join([line] * 30)
    if kind == "symbols":
        return " ".join(f"#{rng.choice(NOUNS)} ..." for _ in range(60))
    if kind == "lorem_ipsum":
        return "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8 + f"The {a} {n}."
    if kind == "code":
        body = [f"  let {w} = compute({w}, {i});" for i, w in enumerate(rng.sample(NOUNS, 12))]
        return "function main() {\n" + "\n".join(body) + "\n  return 0;\n}"
    if kind == "nav_menu":
        return "\n".join(rng.choice(["Home", "About us", "Contact", "Login", "Shop", "Blog", "Careers"]) + f" {i}"
                         for i in range(40))
    if kind == "numbers":
        return "\n".join(" ".join(str(rng.randint(0, 9999)) for _ in range(8)) + "." for _ in range(12))
    raise ValueError(f"unknown low-quality kind {kind!r}")


LOW_QUALITY_KINDS = ("too_short", "bullets", "repeated_lines", "symbols", "lorem_ipsum", "code", "nav_menu",
                     "numbers")

# (type, sentence template, value maker); the PII value goes where {} is.
PII_SENTENCES = (
    ("EMAIL", "For details, write to {} before the festival.", pii.email),
    ("PHONE", "The office can be reached at {} in the morning.", pii.phone),
    ("IP_ADDRESS", "The server at {} was moved to the harbor station.", pii.ipv4),
    ("IP_ADDRESS", "The new gateway has the address {} and works well.", pii.ipv6),
    ("CREDIT_CARD", "Her card number {} was printed on the form.", pii.card),
    ("US_SSN", "His social security number is {} according to the letter.", pii.ssn),
    ("IBAN", "Payments go to the account {} at the bank in Marlow.", pii.iban),
    ("SECRET", "The access key {} was found in the old repository.", pii.aws_access_key),
    ("SECRET", "The config file had aws_secret_access_key = {} in it.", pii.aws_secret_key),
    ("SECRET", "A token {} was pasted into the journal.", pii.github_token),
)
LOOKALIKE_SENTENCES = (
    ("CREDIT_CARD", "The order number {} was printed on the receipt.", lambda r: pii.card(r, valid=False)),
    ("US_SSN", "The file reference {} was written on the folder.", lambda r: pii.ssn(r, valid=False)),
    ("IBAN", "The catalogue code {} was copied from the shelf.", lambda r: pii.iban(r, valid=False)),
    ("IP_ADDRESS", "The sensor value {} appeared in the report.", lambda r: pii.ipv4(r, valid=False)),
    ("PHONE", "The ledger entry {} was checked twice.", pii.phone_lookalike),
)


def _pii_doc(rng: random.Random, lookalike: bool) -> tuple[str, Counter]:
    """A normal document with 1-3 PII sentences (or look-alike sentences) spliced between its paragraphs."""
    table = LOOKALIKE_SENTENCES if lookalike else PII_SENTENCES
    paragraphs = normal_doc(rng).split("\n\n")
    counts: Counter = Counter()
    for pii_type, template, make in rng.sample(table, rng.randint(1, 3)):
        counts[pii_type] += 1
        at = rng.randrange(len(paragraphs) + 1)
        paragraphs.insert(at, sentence(rng) + " " + template.format(make(rng)))
    if not lookalike and rng.random() < 0.1:
        paragraphs.append(pii.private_key_block(rng))
        counts["SECRET"] += 1
    return "\n\n".join(paragraphs), counts


def _malformed(kind: str, doc_id: str) -> bytes:
    if kind == "bad_json":
        return ('{"id": "' + doc_id + '", "text": "The river was quiet and').encode()
    if kind == "invalid_utf8":
        return b'{"id": "' + doc_id.encode() + b'", "text": "The caf\xe9 in Marlow was quiet and warm."}'
    if kind == "missing_text":
        return json.dumps({"id": doc_id, "body": "The garden of Kelby was green."}).encode()
    return json.dumps({"id": doc_id, "text": ""}).encode()


def _plan(n_docs: int) -> dict[str, int]:
    """How many lines of each kind; small corpora still get at least one of each problem."""
    plan = {
        "malformed": len(MALFORMED_KINDS) * max(1, n_docs // 500),
        "low_quality": len(LOW_QUALITY_KINDS) * max(1, n_docs // 250),
        "exact_duplicates": max(2, n_docs // 20),
        "near_duplicates": max(2, n_docs // 40),
        "near_misses": max(2, n_docs // 100),
        "pii_docs": max(2, n_docs // 10),
        "lookalike_docs": max(2, n_docs // 40),
    }
    # every exact copy, near variant and near miss also needs its original
    base = plan["exact_duplicates"] + plan["near_duplicates"] + plan["near_misses"]
    plan["normal"] = n_docs - sum(plan.values()) - base
    if plan["normal"] < 0:
        raise ValueError(f"n_docs={n_docs} is too small for the planted problems; use n_docs >= 100")
    return plan


def _duplicate_items(rng: random.Random, plan: dict[str, int]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for g in range(plan["exact_duplicates"]):
        text = normal_doc(rng)
        items += [{"kind": "exact_original", "text": text, "group": g},
                  {"kind": "exact_duplicate", "text": _exact_copy(rng, text), "group": g}]
    for g in range(plan["near_duplicates"]):
        base = document(rng, rng.randint(30, 40))  # long enough that one edit is a small rate
        rate = NEAR_DUP_EDIT_RATES[g % len(NEAR_DUP_EDIT_RATES)]
        variant = _variant(rng, base, rate, "near_duplicate", g)
        while not _lsh_candidates(base, variant["text"]):
            variant = _variant(rng, base, rate, "near_duplicate", g)
        items += [{"kind": "near_original", "text": base, "group": g}, variant]
    for g in range(plan["near_misses"]):
        base = normal_doc(rng)
        rate = NEAR_MISS_EDIT_RATES[g % len(NEAR_MISS_EDIT_RATES)]
        items += [{"kind": "near_miss_original", "text": base, "group": 10_000 + g},
                  _variant(rng, base, rate, "near_miss", 10_000 + g)]
    return items


def _clean_items(rng: random.Random, plan: dict[str, int]) -> tuple[list[dict[str, Any]], Counter, Counter]:
    items = [{"kind": "normal", "text": normal_doc(rng)} for _ in range(plan["normal"])]
    items += [{"kind": f"low_quality:{LOW_QUALITY_KINDS[i % len(LOW_QUALITY_KINDS)]}",
               "text": _low_quality(rng, LOW_QUALITY_KINDS[i % len(LOW_QUALITY_KINDS)])}
              for i in range(plan["low_quality"])]
    found, lookalikes = Counter(), Counter()
    for i in range(plan["pii_docs"] + plan["lookalike_docs"]):
        lookalike = i >= plan["pii_docs"]
        text, counts = _pii_doc(rng, lookalike)
        (lookalikes if lookalike else found).update(counts)
        items.append({"kind": "pii_lookalike" if lookalike else "pii", "text": text, "pii": dict(counts)})
    return items, found, lookalikes


def _summary(items: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    rows = [it for it in items if it["kind"] == kind]
    rates = Counter(str(it["target_edit_rate"]) for it in rows)
    edits = [it["edit_rate"] for it in rows]
    js = [it["jaccard"] for it in rows]
    return {"planted": len(rows), "by_target_edit_rate": dict(sorted(rates.items())),
            "edit_rate": [min(edits), max(edits)], "jaccard": [round(min(js), 4), round(max(js), 4)]}


def _manifest(plan: dict[str, int], items: list[dict[str, Any]], found: Counter, lookalikes: Counter,
              seed: int, files: list[str]) -> dict[str, Any]:
    n_malformed = {k: plan["malformed"] // len(MALFORMED_KINDS) for k in MALFORMED_KINDS}
    low = Counter(it["kind"].split(":", 1)[1] for it in items if it["kind"].startswith("low_quality:"))
    expected = {
        "rows_in": len(items) + plan["malformed"],
        "rejected": plan["malformed"],  # includes empty_text: the stage may count it as rejected or filtered
        "filtered": plan["low_quality"],
        "exact_duplicates": plan["exact_duplicates"],
        "near_duplicates": plan["near_duplicates"],
    }
    expected["kept"] = expected["rows_in"] - sum(v for k, v in expected.items() if k != "rows_in")
    return {
        "seed": seed,
        "n_docs": expected["rows_in"],
        "files": files,
        "shingle_ngram_size": SHINGLE_N,
        "planted": {
            "normal": plan["normal"],
            "malformed": n_malformed,
            "low_quality": dict(sorted(low.items())),
            "exact_duplicates": plan["exact_duplicates"],
            "near_duplicates": _summary(items, "near_duplicate"),
            "near_misses": _summary(items, "near_miss"),
            "pii_docs": plan["pii_docs"],
            "pii": dict(sorted(found.items())),
            "pii_lookalike_docs": plan["lookalike_docs"],
            "pii_lookalikes": dict(sorted(lookalikes.items())),
        },
        "expected": expected,
    }


PARQUET_SHARD_ROWS = 50_000


def _write_parquet(out_dir: str, items: list[dict[str, Any]]) -> list[str]:
    """Parquet shards of PARQUET_SHARD_ROWS rows (id, text). A malformed line has no Parquet form: its row gets a
    null text (an empty one for `empty_text`), which the data stage quarantines the same way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = []
    for s, start in enumerate(range(0, len(items), PARQUET_SHARD_ROWS)):
        chunk = items[start : start + PARQUET_SHARD_ROWS]
        texts = [("" if it["kind"] == "malformed:empty_text" else None) if it["kind"].startswith("malformed:")
                 else it["text"] for it in chunk]  # fmt: skip
        name = f"part-{s:05d}.parquet"
        pq.write_table(pa.table({"id": [it["id"] for it in chunk], "text": texts}), os.path.join(out_dir, name))
        files.append(name)
    return files


def _write_shards(out_dir: str, items: list[dict[str, Any]], lines: list[bytes]) -> list[str]:
    n_shards = max(1, min(4, len(lines) // 250))
    size = -(-len(lines) // n_shards)
    files = []
    for s in range(n_shards):
        name = f"part-{s:05d}.jsonl"
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(b"\n".join(lines[s * size : (s + 1) * size]) + b"\n")
        files.append(name)
    return files


def write_demo_corpus(out_dir: str, n_docs: int = 2000, seed: int = 0, fmt: str = "jsonl") -> dict:
    """Write the demo corpus (n_docs JSONL lines or Parquet rows, malformed ones included); return its manifest."""
    rng = random.Random(seed)
    plan = _plan(n_docs)
    items, found, lookalikes = _clean_items(rng, plan)
    items += _duplicate_items(rng, plan)
    items += [{"kind": f"malformed:{MALFORMED_KINDS[i % len(MALFORMED_KINDS)]}"} for i in range(plan["malformed"])]
    rng.shuffle(items)
    for i, item in enumerate(items):
        item["id"] = f"doc-{i:07d}" if n_docs >= 1_000_000 else f"doc-{i:06d}"
    os.makedirs(out_dir, exist_ok=True)
    files = _write_parquet(out_dir, items) if fmt == "parquet" else _write_shards(out_dir, items, _lines(items))
    clean = [it for it in items if not it["kind"].startswith("malformed:")]
    manifest = _manifest(plan, clean, found, lookalikes, seed, files)
    labels = [{k: v for k, v in it.items() if k != "text"} for it in items]
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    with open(os.path.join(out_dir, "labels.json"), "w") as f:
        json.dump(labels, f)
    return manifest


def _lines(items: list[dict[str, Any]]) -> list[bytes]:
    lines = []
    for item in items:
        kind = item["kind"]
        if kind.startswith("malformed:"):
            lines.append(_malformed(kind.split(":", 1)[1], item["id"]))
        else:
            lines.append(json.dumps({"id": item["id"], "text": item["text"]}, ensure_ascii=False).encode("utf-8"))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo.corpus", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--n-docs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    args = parser.parse_args(argv)
    try:
        manifest = write_demo_corpus(args.out_dir, n_docs=args.n_docs, seed=args.seed, fmt=args.format)
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(manifest["expected"], sort_keys=True))


if __name__ == "__main__":
    main()

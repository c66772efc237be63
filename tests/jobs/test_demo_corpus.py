"""The demo corpus: deterministic, and its planted problems are what the manifest says."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from jobs.data.filters import build_filters, first_failure
from jobs.data.pii import Redactor
from jobs.data.text import jaccard, normalize, shingles
from jobs.demo.corpus import main, write_demo_corpus
from pipelines.spec.curation import PIIConfig, QualityConfig


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    manifest = write_demo_corpus(out, n_docs=400, seed=3)
    return out, manifest


def _lines(out: str, manifest: dict) -> list[bytes]:
    lines: list[bytes] = []
    for name in manifest["files"]:
        with open(os.path.join(out, name), "rb") as f:
            lines += f.read().splitlines()
    return lines


def _docs(out: str, manifest: dict) -> dict[str, str]:
    docs = {}
    for line in _lines(out, manifest):
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if row.get("text"):
            docs[row["id"]] = row["text"]
    return docs


def _labels(out: str) -> dict[str, dict]:
    with open(os.path.join(out, "labels.json")) as f:
        return {label["id"]: label for label in json.load(f)}


def test_deterministic_and_manifest_written(corpus, tmp_path):
    out, manifest = corpus
    again = write_demo_corpus(str(tmp_path), n_docs=400, seed=3)
    assert again == manifest
    assert _lines(str(tmp_path), again) == _lines(out, manifest)
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f) == manifest
    other = write_demo_corpus(str(tmp_path / "other"), n_docs=400, seed=4)
    assert _lines(str(tmp_path / "other"), other) != _lines(out, manifest)


def test_counts_balance(corpus):
    out, manifest = corpus
    lines = _lines(out, manifest)
    exp = manifest["expected"]
    assert len(lines) == exp["rows_in"] == 400
    assert exp["kept"] + exp["rejected"] + exp["filtered"] + exp["exact_duplicates"] + exp["near_duplicates"] == 400
    kinds = Counter(label["kind"].split(":")[0] for label in _labels(out).values())
    assert kinds["malformed"] == exp["rejected"]
    assert kinds["low_quality"] == exp["filtered"]
    assert kinds["exact_duplicate"] == exp["exact_duplicates"]
    assert kinds["near_duplicate"] == exp["near_duplicates"]


def test_malformed_lines_are_malformed(corpus):
    out, manifest = corpus
    labels = _labels(out)
    seen = Counter()
    for line in _lines(out, manifest):
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            seen["invalid_utf8"] += 1
            continue
        except json.JSONDecodeError:
            seen["bad_json"] += 1
            continue
        if "text" not in row:
            seen["missing_text"] += 1
        elif row["text"] == "":
            seen["empty_text"] += 1
        else:
            assert not labels[row["id"]]["kind"].startswith("malformed")
    assert dict(seen) == manifest["planted"]["malformed"]


def test_default_filters_keep_normal_docs_and_drop_low_quality(corpus):
    out, manifest = corpus
    labels, filters = _labels(out), build_filters(QualityConfig())
    dropped = Counter()
    for doc_id, text in _docs(out, manifest).items():
        reason = first_failure(filters, text)
        if labels[doc_id]["kind"].startswith("low_quality"):
            assert reason is not None, text
            dropped[reason.split(":")[0]] += 1
        else:
            assert reason is None, (labels[doc_id]["kind"], reason, text[:200])
    assert sum(dropped.values()) == manifest["expected"]["filtered"]


def test_planted_duplicates(corpus):
    out, manifest = corpus
    docs, labels = _docs(out, manifest), _labels(out)
    groups: dict[tuple, dict[str, str]] = {}
    for doc_id, label in labels.items():
        if "group" in label:
            groups.setdefault((label["kind"].split("_")[0], label["group"]), {})[label["kind"]] = docs[doc_id]
    for (family, _), members in groups.items():
        a, b = members.values()
        j = jaccard(shingles(a, 5), shingles(b, 5))
        if family == "exact":
            assert normalize(a) == normalize(b)
        elif family == "near" and "near_duplicate" in members:
            assert 0.93 <= j < 1.0
        else:
            assert j < 0.4
    near = manifest["planted"]["near_duplicates"]
    assert near["planted"] == manifest["expected"]["near_duplicates"] and near["jaccard"][0] >= 0.93


def test_cli_writes_corpus(tmp_path, capsys):
    main([str(tmp_path), "--n-docs", "150", "--seed", "1"])
    assert json.loads(capsys.readouterr().out)["rows_in"] == 150
    assert os.path.exists(tmp_path / "manifest.json")
    with pytest.raises(ValueError, match="n_docs >= 100"):
        write_demo_corpus(str(tmp_path / "tiny"), n_docs=20)


def test_planted_pii_is_found_and_lookalikes_are_not(corpus):
    out, manifest = corpus
    docs, labels = _docs(out, manifest), _labels(out)
    redactor = Redactor(PIIConfig())
    found: Counter = Counter()
    for doc_id, text in docs.items():
        kind = labels[doc_id]["kind"]
        redacted, counts = redactor.redact(text)
        if kind == "pii":
            assert counts == labels[doc_id]["pii"], (counts, text)
            found.update(counts)
        elif not kind.startswith("low_quality"):
            assert (redacted, counts) == (text, {}), (kind, counts)
    assert dict(found) == manifest["planted"]["pii"]
    assert set(manifest["planted"]["pii"]) == {"EMAIL", "PHONE", "IP_ADDRESS", "CREDIT_CARD", "US_SSN", "IBAN",
                                               "SECRET"}
    assert sum(manifest["planted"]["pii_lookalikes"].values()) > 0

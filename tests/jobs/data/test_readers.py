"""Readers turn every input unit into exactly one row, quarantining bad ones with a reason."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.data import readers

OPTS = readers.ReadOptions("jsonl", text_field="text", max_doc_bytes=1000)


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"text": "fine document"}', None),
        (b'{"text": "fine', "quarantine:malformed_json"),
        (b'[1, 2]', "quarantine:malformed_json"),
        (b'{"text": "caf\xe9"}', "quarantine:invalid_utf8"),
        (b'{"body": "wrong field"}', "quarantine:missing_text_field"),
        (b'{"text": null}', "quarantine:missing_text_field"),
        (b'{"text": 42}', "quarantine:text_not_a_string"),
        (b'{"text": "   "}', "quarantine:empty"),
        (b"", "quarantine:empty"),
        (json.dumps({"text": "x" * 1001}).encode(), "quarantine:too_large"),
        (json.dumps({"text": "x" * 10_000_000}).encode(), "quarantine:too_large"),
    ],
)
def test_each_bad_unit_gets_its_reason(line, reason):
    row = readers.to_row(line, "00000:0000000001", "f.jsonl:1", OPTS)
    assert row["reason"] == reason
    assert (row["text"] is None) == (reason is not None)


def test_text_files_split_into_paragraphs():
    lines = iter([b"first para", b"continues", b"", b"", b"second"])
    assert list(readers._paragraphs(lines)) == [(1, b"first para\ncontinues"), (5, b"second")]


def test_format_detection():
    assert readers.detect_format("a/b.jsonl.gz", "auto") == "jsonl"
    assert readers.detect_format("a/b.parquet", "auto") == "parquet"
    assert readers.detect_format("a/b.txt", "auto") == "text"
    assert readers.detect_format("a/b.txt", "jsonl") == "jsonl"


@pytest.mark.cluster
def test_read_documents_keeps_one_row_per_line_with_sortable_ids(ray_session, tmp_path):
    lines = [b'{"text": "a"}', b"{oops", b'{"text": "b", "id": 7}', b"\xff\xfe", b'{"text": "c"}']
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    pq.write_table(pa.table({"text": ["p1", None, "p3"]}), tmp_path / "b.parquet")
    opts = readers.ReadOptions("jsonl", id_field="id")
    rows = readers.read_documents([str(tmp_path / "a.jsonl")], opts).take_all()
    rows += readers.read_documents([str(tmp_path / "b.parquet")], readers.ReadOptions("parquet"), 1).take_all()
    rows.sort(key=lambda r: r["id"])
    assert [r["reason"] for r in rows] == [
        None, "quarantine:malformed_json", None, "quarantine:invalid_utf8", None,
        None, "quarantine:missing_text_field", None,
    ]  # fmt: skip
    assert rows[2]["source"].endswith("a.jsonl:3 id=7")
    assert len({r["id"] for r in rows}) == len(rows)

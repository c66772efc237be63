"""`make run` ends with a question the demo chat data teaches, and the answer it teaches."""

import json

import pytest

from jobs.demo.chat import write_demo_chat
from pipelines.errors import ClusterError
from services.client import demo_question


def test_the_demo_question_is_one_the_sft_data_answers(tmp_path):
    write_demo_chat(str(tmp_path), n_sft=300, n_pairs=10)
    question, expected = demo_question(str(tmp_path))
    taught = set()
    for line in (tmp_path / "sft.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        turns = row.get("conversations") or row.get("messages") or []
        taught.update((a.get("content"), b.get("content")) for a, b in zip(turns, turns[1:], strict=False))
    assert (question, expected) in taught, (question, expected)


def test_missing_demo_data_names_the_fix(tmp_path):
    with pytest.raises(ClusterError, match="mc.jsonl .*; write it with `make demo-data`"):
        demo_question(str(tmp_path))

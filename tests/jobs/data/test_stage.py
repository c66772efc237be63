"""The data stage end to end on Ray Data: every input row is accounted for exactly once."""

import json
import os
import re

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.context import StageContext
from jobs.data import stage
from pipelines import storage
from pipelines.load import validate

pytestmark = pytest.mark.cluster

# Long enough (60+ words, several sentences) to pass the default Gopher, C4 and FineWeb rules.
GOOD = (
    "The committee met on Tuesday to review the budget for the new library. The members agreed that the "
    "reading room should stay open later during the exam season. Students need a quiet place to work in the "
    "evening. The librarian said that the extra hours would cost less than the new shelves. A vote on the "
    "plan will take place at the next meeting of the board, which is open to the public. "
)

LINES = st.one_of(
    st.sampled_from([
        json.dumps({"text": GOOD}), json.dumps({"text": GOOD + "Write to ana@example.org for details."}),
        json.dumps({"text": GOOD.upper()}), json.dumps({"text": "too short"}), "{not json", json.dumps({"x": 1}),
        json.dumps({"text": ""}),
    ]),
    st.builds(lambda n: json.dumps({"text": GOOD + f" Item number {n} was added to the agenda."}),
              st.integers(0, 50)),
    st.binary(min_size=1, max_size=30).filter(lambda b: b"\n" not in b).map(lambda b: b.decode("latin-1")),
)  # fmt: skip


def make_ctx(tmp_path, inputs: list[str], **overrides) -> StageContext:
    pipeline = validate({"name": "t", "stages": {"curate": {"kind": "data", "inputs": inputs, **overrides}}})
    out = str(tmp_path / "out")
    storage.delete_dir(out)
    return StageContext("curate", "data", pipeline.stages["curate"], "t", "run", "key", out)


def run_on_lines(tmp_path, lines: list[str], **overrides) -> dict:
    corpus = tmp_path / "in.jsonl"
    corpus.write_bytes(b"\n".join(line.encode("utf-8", "surrogateescape") for line in lines) + b"\n")
    ctx = make_ctx(tmp_path, [str(corpus)], **overrides)
    return stage.run(ctx)["rows"]


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(LINES, min_size=1, max_size=40))
def test_counts_balance_for_any_input(ray_session, tmp_path_factory, lines):
    tmp_path = tmp_path_factory.mktemp("prop")
    rows = run_on_lines(tmp_path, lines)
    assert rows["in"] == len(lines)
    parts = rows["out"] + rows["filtered"] + rows["quarantined"] + rows["duplicates_exact"] + rows["duplicates_near"]
    assert parts == rows["in"]
    assert sum(rows["by_reason"].values()) == rows["in"] - rows["out"]
    written = sum(pq.read_table(f).num_rows for f in storage.list_files(str(tmp_path / "out" / "data"), ".parquet"))
    assert written == rows["out"]


def test_demo_corpus_funnel_matches_what_was_planted(ray_session, tmp_path):
    from jobs.demo.corpus import write_demo_corpus

    manifest = write_demo_corpus(str(tmp_path / "corpus"), n_docs=400, seed=3)
    expected = manifest["expected"]
    ctx = make_ctx(tmp_path, [str(tmp_path / "corpus" / "*.jsonl")], rejected_sample=None)
    metrics = stage.run(ctx)
    rows = metrics["rows"]
    stats = storage.read_json(ctx.path("stats.json"))
    assert stats["rows"] == rows
    assert os.path.exists(ctx.path("report.md"))
    assert rows["in"] == expected["rows_in"]
    # Empty-text lines are malformed in the manifest; the stage may quarantine or filter them.
    assert rows["quarantined"] + rows["filtered"] == expected["rejected"] + expected["filtered"]
    assert rows["duplicates_exact"] == expected["exact_duplicates"]
    assert rows["duplicates_near"] == expected["near_duplicates"]
    assert rows["out"] == expected["kept"]
    rejected = pq.read_table(ctx.path("rejected")).to_pylist()
    assert len(rejected) == rows["in"] - rows["out"], "with rejected_sample=null every rejected row is kept"
    assert all(r["reason"] for r in rejected)
    assert all(r["dup_of"] for r in rejected if r["reason"].startswith("duplicate:"))
    planted_pii = manifest["planted"]["pii"]
    assert metrics["pii"] == {k: v for k, v in planted_pii.items() if v}, "every planted PII value is counted"
    examples = stats["pii_examples"]
    assert set(examples) == set(metrics["pii"]) and all(1 <= len(v) <= stage.PII_EXAMPLES for v in examples.values())
    for contexts in examples.values():  # the value's shape in brackets, no digit or letter of it
        assert all(re.search(r"\[[#x\W_]+\]", c) for c in contexts), contexts
    assert "Examples (the value's letters and digits masked)" in open(ctx.path("report.md")).read()
    kept = pq.read_table(ctx.path("data")).column("text").to_pylist()
    assert any("<EMAIL>" in t for t in kept)
    assert not any(re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", t) for t in kept), "emails are redacted in the output"


def test_twenty_thousand_documents_funnel_exactly_in_bounded_worker_memory(ray_session, tmp_path):
    """The stage at the largest size that fits the suite (bench/curate goes to a million): the funnel equals what
    the generator planted, and no Ray worker's private memory grows past a bound far below the corpus's."""
    from bench.curate import WorkerMemory
    from jobs.demo.corpus import write_demo_corpus

    manifest = write_demo_corpus(str(tmp_path / "corpus"), n_docs=20_000, seed=4, fmt="parquet")
    expected = manifest["expected"]
    ctx = make_ctx(tmp_path, [str(tmp_path / "corpus" / "*.parquet")])
    with WorkerMemory(every_s=0.2) as memory:
        rows = stage.run(ctx)["rows"]
    assert (rows["in"], rows["out"]) == (expected["rows_in"], expected["kept"])
    assert (rows["duplicates_exact"], rows["duplicates_near"]) == (expected["exact_duplicates"],
                                                                   expected["near_duplicates"])  # fmt: skip
    assert rows["quarantined"] + rows["filtered"] == expected["rejected"] + expected["filtered"]
    written = sum(pq.read_table(f).num_rows for f in storage.list_files(ctx.path("data"), ".parquet"))
    assert written == rows["out"]
    assert 0 < memory.peak_mb < 1024, f"a worker's private memory reached {memory.peak_mb} MB"

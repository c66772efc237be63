"""Exact dedup: normalization, in-memory groups, and the global Ray Data version across blocks."""

from __future__ import annotations

import pytest

from jobs.data.dedup import exact_groups, mark_exact_duplicates, survivor_of
from jobs.data.text import dedup_key, normalize


def test_normalize_folds_unicode_case_punctuation_and_space():
    assert normalize("  Ｈｅｌｌｏ,\tWORLD!!\n\nIt's   me… ") == "hello world its me"
    assert normalize("ﬁne café") == "fine café"  # NFKC unfolds the ligature, keeps the accent
    assert normalize("") == "" and normalize(None) == ""


def test_dedup_key_equal_only_for_equal_normalized_text():
    assert dedup_key("The river, quiet.") == dedup_key("the  RIVER quiet")
    assert dedup_key("the river quiet") != dedup_key("the river quieter")


def test_survivor_is_smallest_id():
    assert survivor_of(["b", "a", "c"]) == ["a", None, "a"]


def test_exact_groups_in_memory():
    texts = ["One doc.", "two doc", "ONE   doc", "three", "one doc!"]
    ids = ["5", "4", "3", "2", "1"]
    assert exact_groups(texts, ids) == ["1", None, "1", None, None]


@pytest.mark.cluster
def test_mark_exact_duplicates_is_global_across_blocks(ray_session):
    import ray.data

    # 7 distinct texts repeated; copies of each text are spread over all 6 blocks in varying case/spacing
    rows = []
    for i in range(84):
        base = f"Document number {i % 7} talks about the river."
        text = base.upper() if i % 3 == 0 else base.replace(" ", "  ")
        rows.append({"id": f"id-{(i * 37) % 84:03d}", "text": text})
    ds = ray.data.from_items(rows, override_num_blocks=6)
    assert ds.materialize().num_blocks() == 6
    out = mark_exact_duplicates(ds, num_partitions=3).take_all()

    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)
    by_group: dict[str, list[dict]] = {}
    for r in out:
        by_group.setdefault(normalize(r["text"]), []).append(r)
    assert len(by_group) == 7
    for members in by_group.values():
        smallest = min(m["id"] for m in members)
        assert {m["exact_dup_of"] for m in members if m["id"] != smallest} == {smallest}
        assert [m["exact_dup_of"] for m in members if m["id"] == smallest] == [None]
    assert set(out[0]) == {"id", "text", "exact_dup_of"}


@pytest.mark.cluster
def test_empty_dataset(ray_session):
    import ray.data

    from jobs.data.minhash import mark_near_duplicates
    from pipelines.spec.curation import MinHashConfig

    empty = ray.data.from_items([{"id": "a", "text": "x"}]).filter(lambda r: False)
    assert mark_exact_duplicates(empty).take_all() == []
    marked, stats = mark_near_duplicates(empty, MinHashConfig())
    assert marked.take_all() == [] and stats["duplicates"] == 0 and stats["bands"] == 9

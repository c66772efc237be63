"""The plan: reference checks, cycles, cache keys that change exactly when they should."""

import os

import pytest

from pipelines import plan
from pipelines.errors import SpecError
from pipelines.load import validate


def pipeline(stages: dict, storage: str = "./runs"):
    return validate({"name": "t", "storage": storage, "stages": stages})


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "hello"}\n')
    return str(path)


def stages(corpus):
    return {
        "curate": {"kind": "data", "inputs": [corpus]},
        "tok": {"kind": "tokenizer", "data": "curate"},
        "pretrain": {"kind": "pretrain", "data": "curate", "tokenizer": "tok"},
    }


def test_plan_orders_and_chains_inputs(corpus, tmp_path):
    p = plan.build(pipeline(stages(corpus), str(tmp_path / "runs")))
    assert [s.name for s in p.stages] == ["curate", "tok", "pretrain"]
    pre = p.stages[2]
    assert pre.inputs == {"curate": p.stages[0].uri, "tok": p.stages[1].uri}
    assert pre.uri == os.path.join(str(tmp_path / "runs"), "t", "pretrain", pre.cache_key)
    assert p.run_id.startswith("t-")


def test_same_spec_same_keys_and_run_id(corpus):
    a, b = plan.build(pipeline(stages(corpus))), plan.build(pipeline(stages(corpus)))
    assert [s.cache_key for s in a.stages] == [s.cache_key for s in b.stages]
    assert a.run_id == b.run_id


def test_config_change_rekeys_the_stage_and_downstream_only(corpus):
    base = plan.build(pipeline(stages(corpus)))
    changed = stages(corpus)
    changed["tok"]["vocab_size"] = 1234
    other = plan.build(pipeline(changed))
    keys = lambda p: {s.name: s.cache_key for s in p.stages}  # noqa: E731
    assert keys(base)["curate"] == keys(other)["curate"]
    assert keys(base)["tok"] != keys(other)["tok"]
    assert keys(base)["pretrain"] != keys(other)["pretrain"], "a changed input changes the downstream key"
    assert base.run_id != other.run_id


def test_input_file_change_rekeys(corpus):
    before = plan.build(pipeline(stages(corpus))).stages[0].cache_key
    with open(corpus, "a") as f:
        f.write('{"text": "more"}\n')
    assert plan.build(pipeline(stages(corpus))).stages[0].cache_key != before


def test_missing_stage_reference_suggests(corpus):
    s = stages(corpus)
    s["pretrain"]["tokenizer"] = "tokk"
    with pytest.raises(SpecError, match=r"stages.pretrain.tokenizer: no stage named 'tokk' — did you mean 'tok'\?"):
        plan.build(pipeline(s))


def test_reference_to_later_stage(corpus):
    s = stages(corpus)
    s = {"tok": s["tok"], "curate": s["curate"], "pretrain": s["pretrain"]}
    with pytest.raises(SpecError, match="stages.tok.data: refers to 'curate', which comes later in the file"):
        plan.build(pipeline(s))


def test_cycle_is_reported(corpus):
    s = {
        "a": {"kind": "tokenizer", "data": "b"},
        "b": {"kind": "tokenizer", "data": "a"},
    }
    with pytest.raises(SpecError, match="stages form a cycle: a -> b -> a"):
        plan.build(pipeline(s))


def test_self_reference(corpus):
    with pytest.raises(SpecError, match="refers to itself"):
        plan.build(pipeline({"a": {"kind": "tokenizer", "data": "a"}}))


def test_missing_input_file(tmp_path):
    with pytest.raises(SpecError, match=r"stages.curate.inputs\[0\]: nothing matches .*make demo-data"):
        plan.build(pipeline({"curate": {"kind": "data", "inputs": [str(tmp_path / "none-*.jsonl")]}}))


def test_relative_paths_are_resolved_against_the_working_dir(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = plan.build(pipeline({"curate": {"kind": "data", "inputs": ["./corpus.jsonl"]}}))
    assert p.spec["stages"]["curate"]["inputs"] == [corpus]
    assert p.storage == str(tmp_path / "runs")


def test_plan_round_trips_through_json(corpus):
    p = plan.build(pipeline(stages(corpus)))
    assert plan.Plan.from_json(p.to_json()) == p


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "pipelines",
                        "examples")  # fmt: skip
BLACK_BOX = ("distill.yaml", ["distill.mode=black_box", "distill.temperature=null", "distill.alpha=null",
                              "distill.generation.backend=vllm"])  # fmt: skip


@pytest.mark.parametrize(
    ("example", "overrides"),
    [(name, []) for name in sorted(os.listdir(EXAMPLES)) if name.endswith(".yaml")] + [BLACK_BOX],
)
def test_the_job_reads_back_every_example_as_planned(example, overrides):
    """The job driver validates the plan's stored spec again: every resolved example must pass its own rules (a
    rule on which fields were written, not on their values, failed here: distill in either mode)."""
    from pipelines.load import load
    from pipelines.spec import Pipeline

    resolved = plan.resolve(load(os.path.join(EXAMPLES, example), overrides))
    stored = plan.build(resolved, check_inputs=False).spec
    assert Pipeline.model_validate(stored) == resolved

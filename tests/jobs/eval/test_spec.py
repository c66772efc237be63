"""The eval spec: its rules and messages, references to model stages, cache keys, the example, light imports."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from pipelines import load, plan
from pipelines.code import PROJECT
from pipelines.errors import SpecError
from pipelines.spec import Pipeline
from pipelines.spec.eval import EvalStage
from tests.conftest import ROOT, import_in_fresh_process


def test_defaults_and_references():
    spec = EvalStage(kind="eval", models=["pretrain", "sft", "./hf/model"], text="curate", multiple_choice="./mc.jsonl")
    assert (spec.prompt_format, spec.text_rows, spec.held_out_fraction, spec.prompts) == ("chat", 200, None, [])
    assert spec.references({"pretrain", "sft", "curate"}) == {"models[0]": "pretrain", "models[1]": "sft",
                                                              "text": "curate"}  # fmt: skip


def test_needs_something_to_measure_and_each_model_once():
    with pytest.raises(ValidationError, match="an eval stage needs something to measure; set at least one of text"):
        EvalStage(kind="eval", models=["sft"])
    with pytest.raises(ValidationError, match="models lists sft more than once; each model is one row"):
        EvalStage(kind="eval", models=["sft", "dpo", "sft"], prompts=["hi"])
    with pytest.raises(ValidationError, match="at least 1 item"):
        EvalStage(kind="eval", models=[], prompts=["hi"])


def pipeline(**eval_fields) -> dict:
    return {"name": "p", "stages": {
        "curate": {"kind": "data", "inputs": ["./corpus.jsonl"]},
        "tok": {"kind": "tokenizer", "data": "curate"},
        "pretrain": {"kind": "pretrain", "data": "curate", "tokenizer": "tok"},
        "sft": {"kind": "sft", "model": "pretrain", "data": "./chat.jsonl"},
        "dpo": {"kind": "dpo", "model": "sft", "data": "./pairs.jsonl"},
        "eval": {"kind": "eval", "prompts": ["Hello"], **eval_fields},
    }}  # fmt: skip


def test_models_must_be_stages_that_export_a_causal_lm():
    assert load.validate(pipeline(models=["pretrain", "sft", "dpo", "./some/hf-dir"])).stages["eval"].kind == "eval"
    with pytest.raises(SpecError, match=r"stages.eval.models\[1\]: 'tok' is a tokenizer stage, which exports no causal "
                                        "language model to evaluate; name a pretrain, sft, dpo, grpo, ppo, distill or "
                                        "quantize stage, or a Hugging Face model directory"):  # fmt: skip
        load.validate(pipeline(models=["pretrain", "tok"]))


def test_unknown_model_stage_suggests_the_name():
    with pytest.raises(
        SpecError, match=r"stages.eval.models\[0\]: no stage named 'pretrian' — did you mean 'pretrain'"
    ):
        plan.build(load.validate(pipeline(models=["pretrian"])), check_inputs=False)
    with pytest.raises(SpecError, match="stages.eval.multiple_coice: unknown field — did you mean 'multiple_choice'?"):
        load.validate(pipeline(models=["sft"], multiple_coice="./mc.jsonl"))


def test_eval_key_follows_every_model_it_names():
    def eval_stage(raw: dict):
        return {s.name: s for s in plan.build(load.validate(raw), check_inputs=False).stages}["eval"]

    raw = pipeline(models=["pretrain", "dpo"])
    before = eval_stage(raw)
    assert set(before.inputs) == {"pretrain", "dpo"}
    raw["stages"]["sft"]["val_fraction"] = 0.1  # dpo starts from sft, so dpo and eval are re-keyed
    assert eval_stage(raw).cache_key != before.cache_key
    closure = PROJECT.closure("jobs.eval.stage")
    assert "jobs/eval/stage.py" in closure and "jobs/train/model.py" in closure, "eval runs the training core's model"


def test_example_ends_with_an_eval_of_every_model():
    spec = load.load(os.path.join(ROOT, "pipelines", "examples", "tiny.yaml"))
    name, last = list(spec.stages.items())[-1]
    assert (name, last.kind, last.models) == ("eval", "eval", ["pretrain", "sft", "dpo", "align"])
    assert last.multiple_choice and last.text == "curate" and last.prompts


def test_every_eval_field_has_a_description():
    for field, prop in Pipeline.model_json_schema()["$defs"]["EvalStage"]["properties"].items():
        assert prop.get("description"), f"EvalStage.{field} has no description"


def test_eval_runner_import_is_light():
    modules = "pipelines.spec, jobs.registry, jobs.eval.stage"
    heavy = ('torch', 'transformers', 'ray.data', 'deepspeed', 'vllm')
    proc = import_in_fresh_process(modules, heavy)
    assert proc.returncode == 0, proc.stderr

"""sft, reward_model and dpo specs: defaults, the rules with their messages, cross-stage model checks, examples."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from pipelines import load
from pipelines.errors import SpecError
from pipelines.spec import Pipeline
from pipelines.spec.post import DPOStage, RewardModelStage, SFTStage
from tests.conftest import import_in_fresh_process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
WARM = {"optim": {"warmup_steps": 1}, "schedule": {"steps": 10}}


def test_defaults_and_references():
    spec = DPOStage(kind="dpo", model="sft", data="./pairs.jsonl", **WARM)
    assert (spec.beta, spec.loss, spec.label_smoothing, spec.reference_logprobs) == (0.1, "sigmoid", 0.0, "precompute")
    assert spec.references({"sft", "curate"}) == {"model": "sft"}  # the data path is not a stage
    sft = SFTStage(kind="sft", model="pretrain", data="chat", lora={}, **WARM)
    assert sft.lora.rank == 8 and "down_proj" in sft.lora.target_modules and not sft.packing
    assert sft.references({"pretrain", "chat"}) == {"model": "pretrain", "data": "chat"}


def test_data_formats_each_stage_accepts():
    with pytest.raises(ValidationError, match="data_format 'preference' holds answer pairs, which sft does not"):
        SFTStage(kind="sft", model="m", data="d", data_format="preference", **WARM)
    with pytest.raises(ValidationError, match="a reward model learns from preference pairs; set data_format: pref"):
        RewardModelStage(kind="reward_model", model="m", data="d", data_format="conversations", **WARM)
    with pytest.raises(ValidationError, match="DPO learns from preference pairs; set data_format: preference"):
        DPOStage(kind="dpo", model="m", data="d", data_format="alpaca", **WARM)
    assert SFTStage(kind="sft", model="m", data="d", data_format="alpaca", **WARM)


def test_dpo_rules():
    with pytest.raises(ValidationError, match=r"label_smoothing \(0.1\) only applies to loss: sigmoid"):
        DPOStage(kind="dpo", model="m", data="d", loss="ipo", label_smoothing=0.1, **WARM)
    with pytest.raises(ValidationError, match="greater than 0"):
        DPOStage(kind="dpo", model="m", data="d", beta=0, **WARM)
    with pytest.raises(ValidationError, match="less than 0.5"):
        DPOStage(kind="dpo", model="m", data="d", label_smoothing=0.5, **WARM)
    with pytest.raises(ValidationError, match="reference_logprobs"):
        DPOStage(kind="dpo", model="m", data="d", reference_logprobs="cached", **WARM)


def test_shared_training_rules_apply():
    with pytest.raises(ValidationError, match=r"warmup_steps \(100\) must be below schedule.steps \(50\)"):
        SFTStage(kind="sft", model="m", data="d", schedule={"steps": 50})
    with pytest.raises(ValidationError, match="precision 'bf16' needs GPUs"):
        DPOStage(kind="dpo", model="m", data="d", deepspeed={"precision": "bf16"}, **WARM)
    with pytest.raises(ValidationError, match="rank"):
        SFTStage(kind="sft", model="m", data="d", lora={"rank": 0}, **WARM)


def pipeline(**stages) -> dict:
    base = {
        "curate": {"kind": "data", "inputs": ["./corpus.jsonl"]},
        "tok": {"kind": "tokenizer", "data": "curate"},
        "pretrain": {"kind": "pretrain", "data": "curate", "tokenizer": "tok"},
    }
    return {"name": "p", "stages": {**base, **stages}}


def test_model_must_name_a_stage_that_exports_a_causal_lm():
    ok = pipeline(
        sft={"kind": "sft", "model": "pretrain", "data": "./chat.jsonl"},
        rm={"kind": "reward_model", "model": "sft", "data": "./pairs.jsonl"},
        dpo={"kind": "dpo", "model": "sft", "data": "./pairs.jsonl"},
    )
    assert set(load.validate(ok).stages) >= {"sft", "rm", "dpo"}
    bad = pipeline(sft={"kind": "sft", "model": "tok", "data": "./chat.jsonl"})
    expected = "stages.sft.model: 'tok' is a tokenizer stage, which exports no causal language model; name a " \
        "pretrain, sft, dpo, grpo, ppo or distill stage"
    with pytest.raises(SpecError, match=expected):
        load.validate(bad)
    # A policy after RLHF or a distilled student is a causal LM too: post-training goes on from it.
    after_rl = pipeline(
        align={"kind": "grpo", "model": "pretrain", "prompts": "./p.jsonl", "reward_function": "rewards:exact"},
        student={"kind": "distill", "model": "pretrain", "teacher": "align", "data": "./chat.jsonl"},
        sft={"kind": "sft", "model": "align", "data": "./chat.jsonl"},
        dpo={"kind": "dpo", "model": "student", "data": "./pairs.jsonl"},
    )
    assert load.validate(after_rl).stages["sft"].model == "align"
    rm_as_policy = pipeline(
        rm={"kind": "reward_model", "model": "pretrain", "data": "./p.jsonl"},
        dpo={"kind": "dpo", "model": "rm", "data": "./p.jsonl"},
    )
    with pytest.raises(SpecError, match="stages.dpo.model: 'rm' is a reward_model stage"):
        load.validate(rm_as_policy)


def test_unknown_keys_suggest_the_field():
    raw = pipeline(dpo={"kind": "dpo", "model": "pretrain", "data": "./p.jsonl", "betta": 0.2})
    with pytest.raises(SpecError, match="stages.dpo.betta: unknown field — did you mean 'beta'?"):
        load.validate(raw)


@pytest.mark.parametrize("name", ["tiny.yaml", "reward.yaml"])
def test_examples_validate(name):
    spec = load.load(os.path.join(ROOT, "pipelines", "examples", name))
    kinds = {stage.kind for stage in spec.stages.values()}
    assert {"sft"} <= kinds
    assert ("dpo" in kinds) if name == "tiny.yaml" else ("reward_model" in kinds)


def test_every_post_field_has_a_description():
    schema = Pipeline.model_json_schema()
    for name in ("SFTStage", "RewardModelStage", "DPOStage", "LoraConfig"):
        for field, prop in schema["$defs"][name]["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"


def test_post_runner_import_is_light():
    modules = "pipelines.spec, jobs.registry, jobs.train.sft, jobs.train.reward, jobs.train.dpo"
    heavy = ('torch', 'deepspeed', 'ray.train', 'transformers', 'peft')
    proc = import_in_fresh_process(modules, heavy)
    assert proc.returncode == 0, proc.stderr


def test_an_adapter_only_sft_export_feeds_only_a_serve_stage():
    sft = {"kind": "sft", "model": "/base", "data": "/chat.jsonl", "lora": {"merge": False}, **WARM}
    serve = {"kind": "serve", "model": "sft", "autoscaling": {"target_ongoing_requests": 2}}
    assert Pipeline.model_validate({"name": "p", "stages": {"sft": sft, "serve": serve}})
    dpo = {"kind": "dpo", "model": "sft", "data": "/pairs.jsonl", **WARM}
    with pytest.raises(ValidationError) as info:
        Pipeline.model_validate({"name": "p", "stages": {"sft": sft, "dpo": dpo}})
    assert ("stages.dpo.model: 'sft' exports a LoRA adapter without its base (lora.merge: false), which only a serve "
            "stage takes. Set stages.sft.lora.merge: true to give dpo a whole model.") in str(info.value)

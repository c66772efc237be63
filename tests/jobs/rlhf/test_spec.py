"""grpo and ppo specs: defaults, the rules with their messages, the examples, light imports."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from pipelines import load
from pipelines.errors import SpecError
from pipelines.spec.rlhf import GRPOStage, PPOStage
from tests.conftest import import_in_fresh_process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
RULE = {"model": "sft", "prompts": "./p.jsonl", "reward_function": "jobs.rlhf.rewards:contains_word"}


def test_defaults():
    grpo = GRPOStage(kind="grpo", **RULE)
    assert (grpo.num_samples, grpo.kl.coef, grpo.kl.estimator, grpo.epochs, grpo.rollout.backend) == (
        4, 0.04, "k3", 1, "vllm")  # fmt: skip
    assert grpo.rollout_batch == 32 and grpo.references({"sft"}) == {"model": "sft"}
    ppo = PPOStage(kind="ppo", model="sft", prompts="./p.jsonl", reward_model="rm")
    assert (ppo.kl.estimator, ppo.gamma, ppo.lam, ppo.epochs, ppo.num_samples) == ("k1", 1.0, 0.95, 2, 1)
    assert ppo.references({"sft", "rm"}) == {"model": "sft", "reward_model": "rm"}


def test_reward_rules():
    with pytest.raises(ValidationError, match="set exactly one of reward_model .* or reward_function"):
        GRPOStage(kind="grpo", model="m", prompts="p")
    with pytest.raises(ValidationError, match="set exactly one of reward_model"):
        GRPOStage(kind="grpo", **RULE, reward_model="rm")
    with pytest.raises(ValidationError, match="reward_function 'rewards.length' is not 'module:function'; write it"):
        GRPOStage(kind="grpo", **{**RULE, "reward_function": "rewards.length"})
    with pytest.raises(ValidationError, match="reward_kwargs only apply to reward_function"):
        PPOStage(kind="ppo", model="m", prompts="p", reward_model="rm", reward_kwargs={"word": "x"})


def test_batch_and_group_rules():
    with pytest.raises(ValidationError, match="grpo compares answers to the same prompt, so num_samples must be at "
                                              "least 2 \\(got 1\\)"):  # fmt: skip
        GRPOStage(kind="grpo", **RULE, num_samples=1)
    with pytest.raises(ValidationError, match=r"prompts_per_step × num_samples \(24\) must be a multiple of "
                                              r"actor.num_workers × micro_batch_size \(2 × 8\)"):  # fmt: skip
        GRPOStage(kind="grpo", **RULE, prompts_per_step=6, actor={"num_workers": 2})
    with pytest.raises(ValidationError, match=r"critic.num_workers × micro_batch_size \(3 × 8\)"):
        PPOStage(kind="ppo", **RULE, critic={"num_workers": 3})
    with pytest.raises(ValidationError, match=r"reference.num_workers \(2\) exceeds actor.num_workers \(1\)"):
        GRPOStage(kind="grpo", **RULE, placement="colocated", reference={"num_workers": 2})
    with pytest.raises(ValidationError, match="precision 'bf16' needs GPUs"):
        PPOStage(kind="ppo", **RULE, deepspeed={"precision": "bf16"})
    with pytest.raises(ValidationError, match=r"warmup_steps \(10\) must be below steps \(5\)"):
        GRPOStage(kind="grpo", **RULE, steps=5, optim={"warmup_steps": 10})
    with pytest.raises(ValidationError, match="backend"):
        GRPOStage(kind="grpo", **RULE, rollout={"backend": "sglang"})


def test_pipeline_checks_the_policy_stage():
    raw = {"name": "p", "stages": {
        "tok": {"kind": "tokenizer", "pretrained": "./tok"},
        "align": {"kind": "grpo", **{**RULE, "model": "tok"}},
    }}  # fmt: skip
    with pytest.raises(SpecError, match="stages.align.model: 'tok' is a tokenizer stage, which exports no causal"):
        load.validate(raw)
    with pytest.raises(SpecError, match="stages.align.clip_ratoi: unknown field — did you mean 'clip_ratio'?"):
        load.validate({"name": "p", "stages": {"align": {"kind": "grpo", **RULE, "clip_ratoi": 0.1}}})


@pytest.mark.parametrize("name", ["tiny.yaml", "rlhf-ppo.yaml"])
def test_examples_validate(name):
    spec = load.load(os.path.join(ROOT, "pipelines", "examples", name))
    kinds = {stage.kind for stage in spec.stages.values()}
    assert ("grpo" in kinds) if name == "tiny.yaml" else ({"ppo", "reward_model"} <= kinds)


def test_every_rlhf_field_has_a_description():
    from pipelines.spec import Pipeline

    schema = Pipeline.model_json_schema()
    for name in ("GRPOStage", "PPOStage", "RolloutConfig", "KLConfig"):
        for field, prop in schema["$defs"][name]["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"


def test_rlhf_runner_import_is_light():
    modules = "pipelines.spec, jobs.registry, jobs.rlhf.stage, cluster.worker_group"
    heavy = ('torch', 'deepspeed', 'ray.train', 'transformers', 'vllm')
    proc = import_in_fresh_process(modules, heavy)
    assert proc.returncode == 0, proc.stderr

"""grpo and ppo end to end on the session Ray cluster, from a random tiny chat Llama: a rule reward rises by more
than two standard deviations, the metrics reach TensorBoard, the policy is exported as a Hugging Face model, a
resubmit resumes (grpo) and the critic learns the returns (ppo)."""

from __future__ import annotations

import json
import os
import statistics

import pytest

from jobs.context import StageContext
from jobs.rlhf import stage
from pipelines.spec.rlhf import GRPOStage, PPOStage
from tests.jobs.train.test_pretrain import read_scalars

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# Answers of at most 24 tokens (about 7 words from a random model) scored by how close they are to 1 word: the
# policy learns to stop early and to prefer tokens that do not start a new word, within a few dozen updates.
RULE = {"reward_function": "jobs.rlhf.rewards:target_length", "reward_kwargs": {"words": 1, "per_word": 0.1}}
COMMON = {
    **RULE, "prompts_per_step": 4, "micro_batch_size": 16, "max_prompt_len": 96, "log_every": 1,
    "rollout": {"backend": "generate", "max_new_tokens": 24},
    "actor": {"cpus_per_worker": 0.5}, "reference": {"cpus_per_worker": 0.5},
}  # fmt: skip


def context(kind: str, spec, out: str) -> StageContext:
    return StageContext(kind, kind, spec, "t", "r", "k", out)


def history(out: str) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def assert_reward_rises(rows: list[dict], label: str) -> None:
    """The last steps' mean reward exceeds the first step's by more than two of its per-answer std."""
    first, last = rows[0], statistics.fmean(r["reward_mean"] for r in rows[-3:])
    print(f"{label}: reward {first['reward_mean']:.3f} ± {first['reward_std']:.3f} -> {last:.3f}")
    assert last - first["reward_mean"] > 2 * first["reward_std"]


def assert_tensorboard(out: str, rows: list[dict]) -> None:
    """The stage's tensorboard/ holds every step's reward_mean, equal to metrics.jsonl."""
    scalars = read_scalars(os.path.join(out, "tensorboard"))
    assert scalars["reward_mean"] == pytest.approx({r["step"]: r["reward_mean"] for r in rows}, abs=1e-6)


def assert_exported(out: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = os.path.join(out, "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.architectures == ["LlamaForCausalLM"] and tokenizer.chat_template
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id


def test_grpo_raises_a_rule_reward_exports_and_resumes(ray_session, chat_dir, base_model_dir, tmp_path):
    # One-step off-policy: each step's answers are sampled while the previous step trains (PPO below and the
    # example pipeline's align stage run on-policy).
    def spec(steps: int) -> GRPOStage:
        return GRPOStage(
            kind="grpo", model=base_model_dir, prompts=f"{chat_dir}/sft.jsonl", steps=steps, num_samples=4,
            checkpoint_every=20, optim={"lr": 5e-3, "min_lr": 5e-3, "warmup_steps": 0},
            **{**COMMON, "rollout": {**COMMON["rollout"], "off_policy_steps": 1}},
        )  # fmt: skip

    out = str(tmp_path / "grpo")
    metrics = stage.run(context("grpo", spec(40), out))
    json.dumps(metrics)  # it becomes the _SUCCESS marker
    assert (metrics["step"], metrics["resumed_from_step"], metrics["rollout_backend"]) == (40, 0, "generate")
    assert metrics["prompts"] > 50 and metrics["dropped"] == {"bad_json": 2, "missing_role": 2, "unknown_role": 3}
    rows = history(out)
    assert len(rows) == 40 and {"kl", "entropy", "clipfrac", "sync_s", "samples_per_s"} <= set(rows[-1])
    assert_reward_rises(rows, "grpo")
    assert_tensorboard(out, rows)
    assert_exported(out)
    # The step-20 checkpoint was taken while step 21's prompts were already being answered: it counts only the
    # prompts trained on, so a resumed run samples those again instead of skipping them.
    for step in (20, 40):
        state = json.load(open(os.path.join(out, "_state", "checkpoints", f"step_{step:08d}", "trainer.json")))
        assert state["prompt_position"] == step * 4

    # Resubmitted with more steps: continues from the step-40 checkpoint.
    for name in os.listdir(out):
        if name != "_state":
            os.system(f"rm -rf {os.path.join(out, name)}")
    again = stage.run(context("grpo", spec(42), out))
    assert (again["step"], again["resumed_from_step"], again["steps_run"]) == (42, 40, 2)
    assert len(history(out)) == 42
    assert sorted(read_scalars(os.path.join(out, "tensorboard"))["reward_mean"]) == list(range(1, 43))


def test_ppo_raises_a_rule_reward_and_trains_its_critic(ray_session, chat_dir, base_model_dir, tmp_path):
    # One answer per prompt, two PPO epochs per batch; a small KL coefficient so the penalty, which grows as the
    # policy leaves its random start, does not hold the reward back within 32 steps.
    spec = PPOStage(
        kind="ppo", model=base_model_dir, prompts=f"{chat_dir}/sft.jsonl", steps=32, epochs=2, kl={"coef": 0.01},
        checkpoint_every=32, optim={"lr": 5e-3, "min_lr": 5e-3, "warmup_steps": 0},
        critic_optim={"lr": 5e-3, "min_lr": 5e-3, "warmup_steps": 0}, critic={"cpus_per_worker": 0.5},
        **{**COMMON, "prompts_per_step": 16},
    )  # fmt: skip
    out = str(tmp_path / "ppo")
    metrics = stage.run(context("ppo", spec, out))
    json.dumps(metrics)
    assert (metrics["step"], metrics["rollout_backend"]) == (32, "generate")
    rows = history(out)
    assert len(rows) == 32 and {"value_loss", "explained_var", "rollout_kl", "clipfrac", "entropy"} <= set(rows[-1])
    assert_reward_rises(rows, "ppo")

    # The critic (value head zero-initialised) learns the returns as they rise with the reward: its value loss
    # falls tenfold and its mean value follows the mean reward (gamma 1, so a value estimates the final score).
    assert rows[0]["value_mean"] == 0.0
    assert statistics.fmean(r["value_loss"] for r in rows[-3:]) < rows[0]["value_loss"] / 10
    assert abs(statistics.fmean(r["value_mean"] - r["reward_mean"] for r in rows[-5:])) < 0.15
    assert os.path.isdir(os.path.join(out, "_state", "checkpoints", "step_00000032", "critic"))
    assert_tensorboard(out, rows)
    assert_exported(out)


def test_grpo_trains_a_moe_actor_with_its_load_balancing_loss_and_refuses_cpu_vllm_rollouts(
    ray_session, chat_dir, moe_model_dir, tmp_path
):
    from pipelines.errors import StageError

    fields = {**COMMON, "kind": "grpo", "model": moe_model_dir, "prompts": f"{chat_dir}/sft.jsonl", "steps": 2,
              "num_samples": 4, "checkpoint_every": 2, "optim": {"lr": 1e-3, "warmup_steps": 0}}  # fmt: skip
    refused = GRPOStage(**{**fields, "rollout": {"backend": "vllm", "max_new_tokens": 8}})
    with pytest.raises(StageError) as err:
        stage.run(context("grpo", refused, str(tmp_path / "refused")))
    assert "stages.grpo.rollout.backend: " in str(err.value) and "rollout.backend: generate" in str(err.value)

    out = str(tmp_path / "grpo")
    stage.run(context("grpo", GRPOStage(**fields), out))
    rows = history(out)
    assert [r["step"] for r in rows] == [1, 2] and all(r["aux_loss"] > 0 for r in rows)
    assert all(0 <= r["expert_load_cv"] < 2 for r in rows)
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(os.path.join(out, "model"))).__name__ == "Qwen3MoeForCausalLM"

"""grpo and ppo end to end on the session Ray cluster, from a random tiny chat Llama: a rule reward rises by more
than two standard deviations, the policy is exported as a Hugging Face model, and a resubmit resumes."""

from __future__ import annotations

import json
import os
import statistics

import pytest

from jobs.context import StageContext
from jobs.rlhf import stage
from pipelines.spec.rlhf import GRPOStage

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


def test_grpo_raises_a_rule_reward_exports_and_resumes(ray_session, chat_dir, base_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def spec(steps: int) -> GRPOStage:
        return GRPOStage(
            kind="grpo", model=base_model_dir, prompts=f"{chat_dir}/sft.jsonl", steps=steps, num_samples=4,
            checkpoint_every=steps, optim={"lr": 5e-3, "min_lr": 5e-3, "warmup_steps": 0}, **COMMON,
        )  # fmt: skip

    out = str(tmp_path / "grpo")
    metrics = stage.run(context("grpo", spec(40), out))
    json.dumps(metrics)  # it becomes the _SUCCESS marker
    assert (metrics["step"], metrics["resumed_from_step"], metrics["rollout_backend"]) == (40, 0, "generate")
    assert metrics["prompts"] > 50 and metrics["dropped"] == {"bad_json": 2, "missing_role": 2, "unknown_role": 3}
    rows = history(out)
    assert len(rows) == 40 and {"kl", "entropy", "clipfrac", "sync_s", "samples_per_s"} <= set(rows[-1])
    assert_reward_rises(rows, "grpo")

    model_dir = os.path.join(out, "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.architectures == ["LlamaForCausalLM"] and tokenizer.chat_template
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id

    # Resubmitted with more steps: continues from the step-40 checkpoint.
    for name in os.listdir(out):
        if name != "_state":
            os.system(f"rm -rf {os.path.join(out, name)}")
    again = stage.run(context("grpo", spec(42), out))
    assert (again["step"], again["resumed_from_step"], again["steps_run"]) == (42, 40, 2)
    assert len(history(out)) == 42

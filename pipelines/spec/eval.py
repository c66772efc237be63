"""Evaluation stage spec: measure one or more models of the run (or Hugging Face directories) side by side.

Pure pydantic: nothing here imports torch or ray; `jobs/eval` runs it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from pipelines.spec.base import StageBase
from pipelines.spec.post import INFERENCE_KINDS


class EvalStage(StageBase):
    """Score every model named in `models` on the same inputs and compare them in one table.

    Three measurements, each optional: held-out loss, perplexity and bits per character on a text split;
    multiple-choice accuracy (C-Eval/MMLU-shaped JSONL) by the log-likelihood of each answer; greedy answers to
    a fixed list of prompts. Scoring runs as Ray Data batch inference on the run's cluster.

    Output: `results.md` and `results.json` (one row per model), `generations.jsonl` (prompt, model, answer) and
    `multiple_choice.jsonl` (each question's per-choice log-likelihoods and pick, per model).
    """

    reference_fields = ("models", "text", "multiple_choice")
    model_kinds: ClassVar[tuple[str, ...]] = INFERENCE_KINDS

    kind: Literal["eval"] = Field(description="Stage kind: evaluate and compare models.")
    runner: ClassVar[str] = "jobs.eval.stage:run"
    models: list[str] = Field(
        min_length=1,
        description="Models to compare, one table row each: earlier stages that export a causal language model "
        "(pretrain, sft, dpo, grpo, ppo, distill, quantize) or Hugging Face causal-LM directories (local or s3://) "
        "with their tokenizer files.",
    )
    text: str | None = Field(
        None,
        description="Text to measure loss, perplexity and bits per character on: a data stage, or a .jsonl/.json/"
        ".parquet file, glob or directory (local or s3://) with a text column. Null skips the text measurement.",
    )
    text_column: str = Field("text", min_length=1, description="Column (or JSON key) holding the document text.")
    text_rows: int = Field(
        200, ge=1, description="Documents scored at most (the first ones in file order that pass held_out_fraction)."
    )
    held_out_fraction: float | None = Field(
        None,
        gt=0,
        lt=0.5,
        description="Keep only the documents a pretrain stage with this val_fraction held out (the same hash of "
        "the text decides), so the loss is measured on text no model trained on. Null scores every document.",
    )
    seq_len: int = Field(
        256,
        ge=8,
        description="Longest sequence scored, in tokens (capped by each model's max_position_embeddings). Longer "
        "documents are scored in consecutive windows of this length; longer multiple-choice questions lose "
        "tokens from the start of the question.",
    )
    multiple_choice: str | None = Field(
        None,
        description="Multiple-choice questions: a JSONL file (local or s3://), one object per line in the C-Eval/"
        "MMLU shape: question (string), choices (list of at least two strings; C-Eval's separate A, B, C, D "
        "keys also work), answer (the right choice as a letter 'A', 'B', ... or as a 0-based index 0, 1, ...). "
        "Every choice is scored by its log-likelihood after the question; the likeliest one is the model's "
        "answer. Null skips the measurement.",
    )
    prompt_format: Literal["chat", "plain"] = Field(
        "chat",
        description="How questions and prompts are shown to the model. chat: as a user turn rendered with each "
        "model's chat template, the choice being the assistant's answer (for chat-tuned models); plain: the raw "
        "text followed by the choice after a space (for base models).",
    )
    prompts: list[str] = Field(
        default_factory=list,
        description="Prompts answered greedily by every model, saved to generations.jsonl and the results table "
        "for inspection; rendered as prompt_format says.",
    )
    max_new_tokens: int = Field(32, ge=1, description="Longest greedy answer to each prompt, in tokens.")
    batch_size: int = Field(
        16, ge=1, description="Items (documents, questions or prompts) per Ray Data batch and forward pass."
    )
    use_gpu: bool = Field(False, description="Score on one GPU per scoring actor; false runs on CPU.")
    num_cpus: float = Field(1.0, gt=0, description="Logical CPUs the scoring actor reserves.")

    @model_validator(mode="after")
    def _checks(self) -> EvalStage:
        if self.text is None and self.multiple_choice is None and not self.prompts:
            raise ValueError(
                "an eval stage needs something to measure; set at least one of text (a data stage or text files), "
                "multiple_choice (a JSONL file) or prompts (a list of strings)"
            )
        repeated = [name for name, n in Counter(self.models).items() if n > 1]
        if repeated:
            raise ValueError(
                f"models lists {', '.join(repeated)} more than once; each model is one row of the results table, "
                "so name it once"
            )
        return self

    def check_pipeline(self, name: str, stages: dict[str, Any]) -> None:
        """Every stage named in `models` must export a causal language model (called by the Pipeline)."""
        for i, ref in enumerate(self.models):
            if ref in stages and stages[ref].kind not in self.model_kinds:
                raise ValueError(
                    f"stages.{name}.models[{i}]: '{ref}' is a {stages[ref].kind} stage, which exports no causal "
                    f"language model to evaluate; name a {', '.join(self.model_kinds[:-1])} or "
                    f"{self.model_kinds[-1]} stage, or a Hugging Face model directory"
                )

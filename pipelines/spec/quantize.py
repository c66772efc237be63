"""Quantize stage spec: post-training quantization of a causal LM with llm-compressor, for serving with vLLM.

Pure pydantic: nothing here imports torch or ray; `jobs/quantize` runs it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from pipelines.spec.base import Model, StageBase
from pipelines.spec.post import CAUSAL_LM_KINDS

# What vLLM's CPU backend runs of each scheme's output (compressed-tensors): int8 weights and activations, and
# int4 weights with AVX-512; FP8 kernels exist on GPUs only.
CPU_SCHEMES = ("w8a8-int8", "w4a16")
CALIBRATED_SCHEMES = ("w8a8-int8", "w4a16")
W4A16_GROUP_SIZE = 128


class Calibration(Model):
    """Sample text the quantizer runs through the model to see its activations (GPTQ and SmoothQuant need it)."""

    data: str = Field(
        description="A data stage, or a .jsonl/.json/.parquet file, glob or directory (local or s3://). Rows with "
        "a text column are used as they are; chat rows (messages, or prompt and response) are rendered with "
        "the model's chat template, as the served model will see them."
    )
    samples: int = Field(512, ge=1, description="Rows used, the first ones in file order that hold text.")
    seq_len: int = Field(
        2048, ge=8, description="Longest calibration sequence in tokens (capped by the model's context length)."
    )
    text_column: str = Field("text", min_length=1, description="Column (or JSON key) of plain-text rows.")


class QuantizeStage(StageBase):
    """Quantize a model's weights (and for w8a8-int8 its activations) in one pass over calibration text.

    Output: `model/`, a compressed-tensors Hugging Face directory with the tokenizer and chat template, which
    vLLM serves (it reads the scheme from config.json) and transformers loads; `recipe.yaml`, what was applied.
    """

    reference_fields = ("model",)
    model_kinds: ClassVar[tuple[str, ...]] = CAUSAL_LM_KINDS

    kind: Literal["quantize"] = Field(description="Stage kind: post-training quantization with llm-compressor.")
    runner: ClassVar[str] = "jobs.quantize.stage:run"
    model: str = Field(
        description="The model to quantize: an earlier pretrain, sft, dpo, grpo, ppo or distill stage, or a Hugging "
        "Face causal-LM directory (local or s3://) with its tokenizer files."
    )
    scheme: Literal["w8a8-int8", "w4a16", "fp8-dynamic"] = Field(
        description="w8a8-int8: SmoothQuant then GPTQ, int8 weights (per channel) and int8 activations (per token, "
        "dynamic); runs on CPU and GPU. w4a16: GPTQ, int4 weights in groups of 128, activations unchanged; layer "
        "widths must be multiples of 128. fp8-dynamic: FP8 weights and per-token FP8 activations, no calibration; "
        "GPU only (Hopper/Ada)."
    )
    calibration: Calibration | None = Field(
        None, description="Calibration text (w8a8-int8 and w4a16 need it; fp8-dynamic does not)."
    )
    ignore: list[str] = Field(
        default_factory=lambda: ["lm_head"],
        description="Layers kept in full precision: module names, or 're:'-prefixed regular expressions.",
    )
    smoothing_strength: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="w8a8-int8 only: how much of the activations' outliers SmoothQuant moves into the weights.",
    )
    dampening_frac: float = Field(
        0.01, gt=0, lt=1, description="GPTQ's Hessian dampening, a fraction of its mean diagonal."
    )
    use_gpu: bool = Field(False, description="Quantize on one GPU; false runs on CPU.")
    num_cpus: float = Field(1.0, gt=0, description="Logical CPUs the quantization task reserves.")

    def reference_values(self) -> list[tuple[str, str]]:
        values = super().reference_values()
        if self.calibration is not None:
            values.append(("calibration.data", self.calibration.data))
        return values

    @model_validator(mode="after")
    def _checks(self) -> QuantizeStage:
        if self.scheme == "fp8-dynamic" and not self.use_gpu:
            raise ValueError(
                "scheme: fp8-dynamic makes FP8 weights, which only GPUs compute with (vLLM's CPU backend has no FP8 "
                "kernels); set use_gpu: true on a GPU cluster, or choose w8a8-int8 or w4a16 for CPU"
            )
        if self.scheme in CALIBRATED_SCHEMES and self.calibration is None:
            raise ValueError(
                f"calibration: scheme {self.scheme} calibrates on sample text; set calibration: {{data: <a data "
                "stage, or a chat or text .jsonl file>}"
            )
        return self

    def check_pipeline(self, name: str, stages: dict[str, Any]) -> None:
        """Calibration text from a stage must come from a data stage (called by the Pipeline)."""
        source = self.calibration.data if self.calibration else None
        if source in stages and stages[source].kind != "data":
            raise ValueError(
                f"stages.{name}.calibration.data: '{source}' is a {stages[source].kind} stage, which exports no "
                "text; name a data stage, or a chat or text .jsonl file"
            )

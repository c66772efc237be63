"""Training stage specs. PLACEHOLDER: the tokenizer/pretraining work replaces this file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.spec.base import Scaling, StageBase


class TokenizerStage(StageBase):
    reference_fields = ("data",)
    kind: Literal["tokenizer"]
    data: str = Field(description="The data stage to train on.")
    vocab_size: int = Field(4096, description="Vocabulary size.")


class PretrainStage(StageBase):
    reference_fields = ("data", "tokenizer")
    kind: Literal["pretrain"]
    data: str = Field(description="The data stage to train on.")
    tokenizer: str = Field(description="The tokenizer stage or a tokenizer directory.")
    scaling: Scaling = Field(default_factory=Scaling, description="Ray Train workers.")

"""Distillation objectives for the shared training loop (jobs.train.loop), reading the SFT batch builder's rows.

`WeightedLM` is black-box distillation's loss: next-token cross-entropy on the answer tokens (which the teacher
wrote), weighted when the rows carry tag weights. `Distillation` adds white-box KD: a frozen teacher, loaded on
every worker in `setup`, scores the same tokens and the student matches its distributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.distill.losses import kd_loss, weighted_cross_entropy
from jobs.train.chat_data import IGNORE
from jobs.train.model import ModelSource
from jobs.train.objectives import Objective, longest

if TYPE_CHECKING:
    import torch


def shifted(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(ids (B, n), labels (B, n-1), weights (B, n-1) or None): rows cut to the longest, targets shifted by one so
    logits[:, :-1] line up with them."""
    n = longest(batch["length"])
    ids, labels = batch["input_ids"][:, :n].long(), batch["labels"][:, :n].long()
    weights = batch["weights"][:, 1:n].float() if "weights" in batch else None
    return ids, labels[:, 1:], weights


def counts(batch: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
    return {"tokens": int(batch["length"].sum()), "loss_tokens": int((labels != IGNORE).sum())}


@dataclass
class WeightedLM(Objective):
    """Cross-entropy on the answer tokens, each weighted by the rows' `weights` column when present."""

    name: str = "distill_sft"

    def batch_dtype(self) -> Any:
        return None

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        ids, labels, weights = shifted(batch)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]  # (B, n-1, V)
        return weighted_cross_entropy(logits, labels, weights), counts(batch, labels)


@dataclass
class Distillation(Objective):
    """White-box KD: alpha · T² · KL(teacher ‖ student) + (1 - alpha) · cross-entropy, on the answer tokens.

    `vocab` is the tokenizer's size: both models may pad their output layer past it (to a multiple of 64, or to
    a different multiple), so both terms use the logits of real tokens only."""

    teacher: ModelSource
    vocab: int
    temperature: float
    alpha: float
    seed: int = 0
    name: str = "distill"
    metric_names = ("kl", "ce")

    def setup(self, device: torch.device) -> None:
        self.teacher_model = self.teacher.build(self.seed).to(device).eval().requires_grad_(False)

    def batch_dtype(self) -> Any:
        return None

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        import torch

        ids, labels, weights = shifted(batch)
        student = model(input_ids=ids, use_cache=False).logits[:, :-1, : self.vocab]  # (B, n-1, vocab)
        with torch.no_grad():
            teacher = self.teacher_model(input_ids=ids, use_cache=False).logits[:, :-1, : self.vocab]
        loss, kl, ce = kd_loss(
            student, teacher, labels, weights, temperature=self.temperature, alpha=self.alpha
        )  # fmt: skip
        return loss, {**counts(batch, labels), "kl": kl.detach(), "ce": ce.detach()}

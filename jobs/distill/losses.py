"""The distillation losses as plain tensor functions, so tests check them against hand-computed values.

`kd_loss` is Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network", section 2): the KL divergence from
the teacher's to the student's softmax at temperature T, multiplied by T² (the soft targets' gradients shrink as
1/T², so the product keeps the two terms on one scale), mixed with the ordinary cross-entropy on the hard labels.
Both are weighted means over the answer tokens, so tag tokens can weigh more (see tags.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobs.train.chat_data import IGNORE

if TYPE_CHECKING:
    import torch


def token_weights(labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """(B, T) float weights: the given ones (or 1) on tokens with a label, 0 where the label is IGNORE."""
    mask = (labels != IGNORE).float()
    return mask if weights is None else weights.float() * mask


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum().clamp(min=1e-8)


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) cross-entropy of each label under logits (B, T, V); 0 where the label is IGNORE."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, T) KL(teacher ‖ student) = Σ_v p_t(v) · (log p_t(v) - log p_s(v)), both softmaxed at temperature T."""
    import torch.nn.functional as F

    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (teacher.exp() * (teacher - student)).sum(-1)


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token loss over labelled tokens, each weighted (black-box distillation's SFT loss)."""
    return weighted_mean(token_cross_entropy(logits, labels), token_weights(labels, weights))


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    temperature: float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, kl, ce) with loss = alpha · T² · kl + (1 - alpha) · ce.

    student_logits and teacher_logits (B, T, V) score the positions whose target is labels (B, T) (already shifted:
    position t predicts labels[t]); positions labelled IGNORE count in neither term. kl is the weighted mean
    per-token KL at temperature T (unscaled), ce the weighted mean cross-entropy of the student on the labels."""
    w = token_weights(labels, weights)
    kl = weighted_mean(token_kl(student_logits, teacher_logits, temperature), w)
    ce = weighted_mean(token_cross_entropy(student_logits, labels), w)
    return alpha * temperature**2 * kl + (1 - alpha) * ce, kl, ce

"""The post-training losses as plain tensor functions, so tests check them against hand-computed values.

`dpo_loss` follows Rafailov et al. 2023 (eq. 7) with the conservative label smoothing of Mitchell's cDPO note, and
Azar et al. 2023 (IPO, eq. 17), in the form TRL's `DPOTrainer.dpo_loss` computes them; `bradley_terry_loss` is the
pairwise reward-model loss of Ouyang et al. 2022 (eq. 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def sequence_logps(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, average: bool) -> torch.Tensor:
    """Log-probability of each row's masked tokens under `logits`, summed (or averaged per token).

    logits (B, T, V) predict ids (B, T) shifted by one: token t is scored by logits[t - 1]; mask (B, T) marks
    the tokens to score (mask[:, 0] is ignored, nothing predicts the first token)."""
    import torch.nn.functional as F

    targets = ids[:, 1:]
    token_logps = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")  # (B, T-1)
    weights = mask[:, 1:].to(token_logps.dtype)
    total = (token_logps * weights).sum(-1)
    return total / weights.sum(-1).clamp(min=1) if average else total


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    kind: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards) from policy and reference log-probs of the answers.

    The implicit reward of an answer is beta * (log pi(y|x) - log ref(y|x)). `sigmoid` is DPO's logistic loss on
    the reward margin, with labels flipped with probability `label_smoothing` (cDPO); `ipo` regresses the
    log-ratio margin onto 1 / (2 beta) and expects per-token average log-probs."""
    import torch.nn.functional as F

    logits = (chosen - rejected) - (ref_chosen - ref_rejected)
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    elif kind == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss '{kind}'; use sigmoid or ipo")
    return losses, beta * (chosen - ref_chosen).detach(), beta * (rejected - ref_rejected).detach()


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected): the probability that the chosen answer wins, under the
    Bradley-Terry model of pairwise preferences, is maximised."""
    import torch.nn.functional as F

    return -F.logsigmoid(chosen - rejected).mean()

"""The RLHF maths as plain tensor functions, so tests check each against hand-computed values.

Per-token tensors are (B, T) at "action" resolution: column t is the token ids[:, t + 1], scored by the logits
at position t (see `token_logps`); `mask` marks the answer tokens. Sources: KL estimators k1/k3 from Schulman's
"Approximating KL divergence" note; GAE from Schulman et al. 2016 (eq. 16); the clipped surrogate and value
clipping from PPO (Schulman et al. 2017) as OpenAI's baselines ppo2 implements them; GRPO's group-normalised
advantages and in-loss KL from Shao et al. 2024 (eq. 3-4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x shifted to mean 0 and scaled to std 1 over the masked entries (unbiased variance, as TRL/OpenRLHF)."""
    mean = masked_mean(x, mask)
    n = mask.sum().clamp(min=2)
    var = (((x - mean) ** 2) * mask).sum() / (n - 1)
    return (x - mean) * (var + eps).rsqrt() * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over the answer tokens: how much of the returns' spread the critic predicts (1:
    all of it, 0: no better than a constant, negative: worse than one). The usual health metric of a critic."""

    def var(x: torch.Tensor) -> torch.Tensor:
        return masked_mean((x - masked_mean(x, mask)) ** 2, mask)

    return 1 - var(returns - values) / var(returns).clamp(min=1e-8)


def token_logps(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, T-1) log-probability of each next token: logits (B, T, V) at t score ids[:, t + 1]."""
    import torch.nn.functional as F

    return -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, T-1) entropy of the next-token distributions at the positions `token_logps` scores."""
    import torch

    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) at tokens sampled from pi. k1 = log pi - log ref;
    k3 = r - log r - 1 with r = ref / pi."""
    import torch

    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1
    raise ValueError(f"unknown KL estimator '{estimator}'; use k1 or k3")


def shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """(B, T) per-token rewards: -kl_coef × KL at every answer token, plus the sequence score at its last one."""
    import torch

    rewards = -kl_coef * kl * mask
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & mask.bool()  # the final answer token of each row
    return rewards + torch.where(last, scores[:, None].to(rewards.dtype), torch.zeros_like(rewards))


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both (B, T) and zero outside the answer. The episode ends after each row's last
    answer token, so nothing is bootstrapped past it: delta_t = r_t + gamma V_{t+1} - V_t and
    A_t = delta_t + gamma lam A_{t+1}, with V and A beyond the answer taken as 0."""
    import torch

    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_adv) * mask[:, t]
        next_value, next_adv = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def group_advantages(scores: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each score minus its group's mean (rows g*n .. g*n+n-1 answer one prompt), divided by the group's
    std (unbiased, as TRL) when `scale`. A group whose answers all score the same gets advantage 0."""
    groups = scores.view(-1, group_size)
    centred = groups - groups.mean(-1, keepdim=True)
    if scale:
        centred = centred / (groups.std(-1, keepdim=True) + eps)
    return centred.reshape(-1)


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate max(-A r, -A clip(r, 1-eps, 1+eps)) with r = pi / pi_old, as (B, T) losses,
    plus the clip fraction and approximate KL(pi_old || pi) over the masked tokens (both detached)."""
    import torch

    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    losses = torch.maximum(unclipped, clipped)
    clipfrac = masked_mean((clipped > unclipped).float(), mask).detach()
    approx_kl = masked_mean(0.5 * (logp - old_logp) ** 2, mask).detach()
    return losses, clipfrac, approx_kl


def ppo_actor_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's actor loss: the clipped surrogate averaged over every answer token of the batch."""
    losses, clipfrac, approx_kl = policy_loss(logp, old_logp, advantages, mask, clip)
    return masked_mean(losses, mask), clipfrac, approx_kl


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float,
    kl_coef: float,
    estimator: str = "k3",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's objective (negated): per token the clipped surrogate with the sequence's advantage plus
    kl_coef × KL(pi || ref), averaged over each answer's tokens, then over answers. advantages: (B,)."""
    losses, clipfrac, approx_kl = policy_loss(logp, old_logp, advantages[:, None].expand_as(logp), mask, clip)
    kl = kl_estimate(logp, ref_logp, estimator)
    per_answer = masked_mean(losses + kl_coef * kl, mask, dim=-1)
    metrics = {"clipfrac": clipfrac, "approx_kl": approx_kl, "kl": masked_mean(kl, mask).detach()}
    return per_answer.mean(), metrics


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 × max((V - R)^2, (V_old + clip(V - V_old, ±clip) - R)^2) over the answer tokens,
    and the fraction of tokens where the clipped term won."""
    import torch

    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask).detach()

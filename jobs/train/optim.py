"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipelines.spec.train import OptimConfig

if TYPE_CHECKING:
    import torch


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr after `step` optimizer steps: linear warmup, then cosine down to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weight matrices and embeddings; leave norms and biases alone (nanoGPT/Llama practice)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    keep = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, *, offload: bool) -> Any:
    """torch AdamW, or DeepSpeedCPUAdam when ZeRO-Offload runs the update on the CPU (several times faster).

    The model is still on the CPU here (DeepSpeed moves it), so torch picks its implementation per device at the
    first step; asking for `fused=True` now would be refused for CPU parameters."""
    import torch

    groups = param_groups(model, optim.weight_decay)
    kwargs = {"lr": optim.lr, "betas": (optim.beta1, optim.beta2), "eps": optim.eps}
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def scheduler_factory(optim: OptimConfig, total_steps: int) -> Callable[[Any], Any]:
    """A function DeepSpeed calls with the optimizer to build the LambdaLR it steps at each optimizer step."""
    import torch

    def factor(step: int) -> float:
        return lr_factor(step, warmup=optim.warmup_steps, total=total_steps, min_ratio=optim.min_lr / optim.lr)

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""LoRA adapters (Hu et al. 2021) through peft: only the low-rank matrices train; export merges them back.

Merging (W + B·A · alpha/r) at export means the stage writes an ordinary transformers model, so serving, later
stages and `from_pretrained` need nothing from peft.
"""

from __future__ import annotations

from typing import Any

from pipelines.spec.post import LoraConfig


def wrap(model: Any, spec: LoraConfig) -> Any:
    """`model` as a peft model with adapters on `spec.target_modules`; the base weights are frozen."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError as exc:  # a worker image without the project's dependencies
        raise RuntimeError("lora needs the `peft` package on the training workers: pip install peft") from exc

    config = PeftLoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)

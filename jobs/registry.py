"""Stage kind -> the function that runs it, imported only when a stage of that kind runs."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pipelines.errors import SpecError, did_you_mean

RUNNERS: dict[str, str] = {
    "data": "jobs.data.stage:run",
    "tokenizer": "jobs.tokenizer:run",
    "pretrain": "jobs.train.pretrain:run",
    "sft": "jobs.train.sft:run",
    "reward_model": "jobs.train.reward:run",
    "dpo": "jobs.train.dpo:run",
    "grpo": "jobs.rlhf.stage:run",
    "ppo": "jobs.rlhf.stage:run",
    "serve": "services.stage:run",
    "distill": "jobs.distill.stage:run",
    "eval": "jobs.eval.stage:run",
}


def runner(kind: str) -> Callable[[Any], dict]:
    if kind not in RUNNERS:
        raise SpecError(f"stage kind '{kind}' has no runner{did_you_mean(kind, RUNNERS)}")
    module, _, func = RUNNERS[kind].partition(":")
    return getattr(importlib.import_module(module), func)

"""The `sft` stage: supervised fine-tuning on conversations, loss on the assistant's tokens only.

Writes `model/` (a plain Hugging Face causal LM: LoRA adapters, when used, are merged in), `tensorboard/`, and
keeps Ray Train checkpoints under `_state/` so a resubmitted run resumes where the last one stopped.
"""

from __future__ import annotations

import time
from typing import Any

from jobs.context import StageContext
from jobs.train import chat_datasets, post
from jobs.train.objectives import AssistantLM
from pipelines.spec.post import SFTStage


def run(ctx: StageContext) -> dict[str, Any]:
    started = time.time()
    spec: SFTStage = ctx.spec
    base = post.resolve(ctx, spec)
    data = chat_datasets.prepare(base.files, base.settings, "sft", f"stages.{ctx.name}.data", pack=spec.packing)
    return post.train(ctx, spec, base, base.source(lora=spec.lora), AssistantLM(), data, started)

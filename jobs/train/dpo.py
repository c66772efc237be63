"""The `dpo` stage: direct preference optimisation of a causal LM against a frozen copy of itself.

The reference's log-probs are computed once by Ray Data batch inference (`reference_logprobs: precompute`) or by
a frozen copy on every worker (`on_the_fly`). Writes `model/`, `tensorboard/` and `_state/` like the others.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from jobs.context import StageContext
from jobs.train import chat_datasets, post, reference
from jobs.train.objectives import DPO
from pipelines.spec.post import DPOStage


def run(ctx: StageContext) -> dict[str, Any]:
    started = time.time()
    spec: DPOStage = ctx.spec
    base = post.resolve(ctx, spec)
    source = base.source()
    on_the_fly = spec.reference_logprobs == "on_the_fly"
    objective = DPO(
        beta=spec.beta,
        loss_type=spec.loss,
        label_smoothing=spec.label_smoothing,
        reference=source if on_the_fly else None,
        seed=spec.schedule.seed,
    )
    score = None
    if not on_the_fly:
        score = functools.partial(
            reference.add_reference_logps, source=source, average=objective.average_logps,
            seed=spec.schedule.seed, use_gpu=spec.scaling.use_gpu, batch_size=2 * spec.schedule.micro_batch_size,
        )  # fmt: skip
    data = chat_datasets.prepare(base.files, base.settings, "pairs", f"stages.{ctx.name}.data", transform=score)
    return post.train(ctx, spec, base, source, objective, data, started)

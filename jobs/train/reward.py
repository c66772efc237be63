"""The `reward_model` stage: a scalar reward head on the Llama backbone, trained on preference pairs.

Writes `model/` as LlamaForSequenceClassification (num_labels=1, pad_token_id set), which
`AutoModelForSequenceClassification` loads as it is and the RLHF stages use as their reward model.
"""

from __future__ import annotations

import time
from typing import Any

from jobs.context import StageContext
from jobs.train import chat_datasets, post
from jobs.train.objectives import PairwiseReward
from pipelines.spec.post import RewardModelStage


def run(ctx: StageContext) -> dict[str, Any]:
    started = time.time()
    spec: RewardModelStage = ctx.spec
    base = post.resolve(ctx, spec)
    data = chat_datasets.prepare(base.files, base.settings, "pairs", f"stages.{ctx.name}.data")
    return post.train(ctx, spec, base, base.source(head="reward"), PairwiseReward(), data, started)

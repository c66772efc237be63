"""DPO's reference log-probs computed once, before training, by Ray Data batch inference.

One actor loads the starting model (the same weights the policy starts from) and scores every usable pair; the
result is materialized with the rows, so training workers never hold a second model and no epoch repeats the work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from jobs.train.losses import sequence_logps
from jobs.train.model import ModelSource
from jobs.train.objectives import pair_inputs

if TYPE_CHECKING:
    import ray.data

PAIR_COLUMNS = ("prompt_len", "chosen_ids", "rejected_ids", "chosen_len", "rejected_len")


class ReferenceScorer:
    """Ray Data callable class: adds ref_chosen_logp / ref_rejected_logp (float32) to each batch of pairs."""

    def __init__(self, source: ModelSource, average: bool, seed: int, use_gpu: bool) -> None:
        import torch

        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model = source.build(seed).to(self.device).eval().requires_grad_(False)
        self.average = average

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        tensors = {name: torch.as_tensor(batch[name], device=self.device) for name in PAIR_COLUMNS}
        ids, mask, pairs = pair_inputs(tensors)
        with torch.no_grad():
            logits = self.model(input_ids=ids, use_cache=False).logits
            logps = sequence_logps(logits, ids, mask, self.average).float().cpu().numpy()
        return {**batch, "ref_chosen_logp": logps[:pairs], "ref_rejected_logp": logps[pairs:]}


def add_reference_logps(
    ds: ray.data.Dataset, source: ModelSource, *, average: bool, seed: int, use_gpu: bool, batch_size: int
) -> ray.data.Dataset:
    """`ds` with the reference model's log-probs of both answers of every pair."""
    resources: dict[str, Any] = {"num_gpus": 1} if use_gpu else {}
    return ds.map_batches(
        ReferenceScorer,
        fn_constructor_kwargs={"source": source, "average": average, "seed": seed, "use_gpu": use_gpu},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=1,
        **resources,
    )

"""What a training stage optimises: how its data becomes batches and how a batch becomes a loss.

The training loop (`loop.py`) is the same for every stage; a stage supplies an `Objective`. Pretraining is
`CausalLM`; SFT (loss on assistant tokens), reward modelling (Bradley-Terry on pairs) and DPO (with a frozen
reference loaded in `setup`) subclass `Objective` with their own `build_datasets` and `loss`.

An objective is built on the driver and pickled to every worker, so it holds plain values (URIs, sizes), not
models or tensors; `setup` runs on the worker to load anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.train import packing
from jobs.train.sources import TokenizerInfo

if TYPE_CHECKING:
    import ray.data
    import torch


class Objective:
    """Base class: subclasses implement `build_datasets` (driver) and `loss` (worker)."""

    name = "objective"

    def build_datasets(self) -> dict[str, ray.data.Dataset]:
        """Ray Datasets by split: "train" is required; "val" enables evaluation. Rows are what `loss` reads."""
        raise NotImplementedError

    def setup(self, device: torch.device) -> None:
        """Runs once per worker before training, e.g. to load a frozen reference model. Default: nothing."""

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss to backpropagate, metrics). Metrics must hold "tokens" (tokens processed, for throughput)
        and "loss_tokens" (tokens the loss averages over, to weight evaluation means)."""
        raise NotImplementedError


@dataclass
class CausalLM(Objective):
    """Next-token prediction on packed sequences: the pretraining objective."""

    files: list[str]
    tokenizer: TokenizerInfo
    text_column: str
    seq_len: int
    val_fraction: float
    materialize: bool = False  # tokenize once and keep the packed rows in the object store
    name: str = "causal_lm"

    def build_datasets(self) -> dict[str, ray.data.Dataset]:
        common = {
            "tokenizer_json": self.tokenizer.tokenizer_json,
            "text_column": self.text_column,
            "seq_len": self.seq_len,
            "eos_id": self.tokenizer.eos_id,
            "val_fraction": self.val_fraction,
        }
        datasets = {split: packing.packed_dataset(self.files, split=split, **common) for split in ("train", "val")}
        if self.materialize:
            datasets = {split: ds.materialize() for split, ds in datasets.items()}
        return datasets

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ids = batch["input_ids"]  # (B, T)
        out = model(input_ids=ids, labels=ids, use_cache=False)
        batch_size, seq_len = ids.shape
        return out.loss, {"tokens": batch_size * seq_len, "loss_tokens": batch_size * (seq_len - 1)}

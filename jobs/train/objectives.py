"""What a training stage optimises: how a batch becomes a loss, for every stage that runs the training core.

The training loop (`loop.py`) is the same for every stage; a stage supplies an `Objective`: pretraining is
`CausalLM` (packed next-token prediction), SFT is `AssistantLM` (next-token loss on assistant tokens only),
reward modelling is `PairwiseReward` (Bradley-Terry on chosen/rejected pairs) and DPO is `DPO` (policy against a
frozen reference). Each reads the rows its stage's batch builder wrote (`packing.py` for pretraining,
`chat_datasets.py` for the others).

An objective is built on the driver and pickled to every worker, so it holds plain values (URIs, sizes), not
models or tensors; `setup` runs on the worker to load anything heavy (DPO's on-the-fly reference model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.train import packing
from jobs.train.chat_data import IGNORE
from jobs.train.losses import bradley_terry_loss, dpo_loss, sequence_logps
from jobs.train.model import ModelSource
from jobs.train.sources import TokenizerInfo

if TYPE_CHECKING:
    import ray.data
    import torch


class Objective:
    """Base class: subclasses implement `loss` (worker side)."""

    name = "objective"
    # Extra per-batch means `loss` reports (besides the loss), averaged over micro-batches and ranks in the logs
    # and over the validation set at evaluation (as eval_<name>). Fixed per class: every rank reduces the same list.
    metric_names: tuple[str, ...] = ()

    def setup(self, device: torch.device) -> None:
        """Runs once per worker before training, e.g. to load a frozen reference model. Default: nothing."""

    def batch_dtype(self) -> Any:
        """The dtype Ray Data converts every column to, or None to keep each column's stored dtype."""
        import torch

        return torch.long

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """(scalar loss to backpropagate, metrics). Metrics must hold "tokens" (tokens processed, for throughput)
        and "loss_tokens" (how many units — tokens or pairs — the loss averages over, to weight evaluation
        means), plus a value (a float or a 0-d tensor) for each of `metric_names`."""
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


def longest(lengths: torch.Tensor) -> int:
    """The longest row of a batch: rows are stored padded to max_len, the forward pass only needs this much."""
    return max(1, int(lengths.max()))


@dataclass
class AssistantLM(Objective):
    """Supervised fine-tuning: next-token loss on the assistant tokens of chat rows (labels are IGNORE elsewhere).
    Packed rows carry position_ids, which transformers turns into a block-diagonal attention mask."""

    name: str = "sft"

    def batch_dtype(self) -> Any:
        return None

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        n = longest(batch["length"])
        ids, labels = batch["input_ids"][:, :n].long(), batch["labels"][:, :n].long()  # (B, n)
        extra = {"position_ids": batch["position_ids"][:, :n].long()} if "position_ids" in batch else {}
        out = model(input_ids=ids, labels=labels, use_cache=False, **extra)
        return out.loss, {"tokens": int(batch["length"].sum()), "loss_tokens": int((labels[:, 1:] != IGNORE).sum())}


def pair_inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids, answer mask, pairs): chosen rows then rejected rows, cut to the longest; the mask marks each row's
    answer tokens (after the shared prompt, before the padding)."""
    import torch

    n = max(longest(batch["chosen_len"]), longest(batch["rejected_len"]))
    ids = torch.cat([batch["chosen_ids"][:, :n], batch["rejected_ids"][:, :n]]).long()  # (2B, n)
    lengths = torch.cat([batch["chosen_len"], batch["rejected_len"]]).long()
    prompt = batch["prompt_len"].long().repeat(2)
    positions = torch.arange(n, device=ids.device)
    mask = (positions[None, :] >= prompt[:, None]) & (positions[None, :] < lengths[:, None])
    return ids, mask, batch["chosen_ids"].shape[0]


def pair_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["chosen_len"].sum() + batch["rejected_len"].sum())


@dataclass
class PairwiseReward(Objective):
    """Reward modelling: a scalar score per sequence (read at its last non-pad token, as
    LlamaForSequenceClassification does at inference), trained so the chosen answer outscores the rejected one."""

    name: str = "reward"
    metric_names = ("accuracy", "margin", "reward_chosen", "reward_rejected")

    def batch_dtype(self) -> Any:
        return None

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        ids, _, pairs = pair_inputs(batch)
        scores = model(input_ids=ids, use_cache=False).logits.squeeze(-1).float()  # (2B,)
        chosen, rejected = scores[:pairs], scores[pairs:]
        return bradley_terry_loss(chosen, rejected), {
            "tokens": pair_tokens(batch),
            "loss_tokens": pairs,
            "accuracy": (chosen > rejected).float().mean().detach(),
            "margin": (chosen - rejected).mean().detach(),
            "reward_chosen": chosen.mean().detach(),
            "reward_rejected": rejected.mean().detach(),
        }


@dataclass
class DPO(Objective):
    """Direct preference optimisation against a frozen reference with the same initial weights. Reference
    log-probs come with the batch (`ref_chosen_logp`/`ref_rejected_logp`, precomputed once by Ray Data batch
    inference) or, when `reference` is set, from a copy of the model loaded on every worker (on the fly)."""

    beta: float
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    reference: ModelSource | None = None
    seed: int = 0
    name: str = "dpo"
    metric_names = ("reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected")

    @property
    def average_logps(self) -> bool:
        return self.loss_type == "ipo"  # IPO is defined on per-token average log-probs (as TRL computes it)

    def setup(self, device: torch.device) -> None:
        self.reference_model = None
        if self.reference is not None:
            self.reference_model = self.reference.build(self.seed).to(device).eval().requires_grad_(False)

    def batch_dtype(self) -> Any:
        return None

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        ids, mask, pairs = pair_inputs(batch)
        logps = sequence_logps(model(input_ids=ids, use_cache=False).logits, ids, mask, self.average_logps)
        ref_chosen, ref_rejected = self.reference_logps(batch, ids, mask, pairs)
        losses, chosen, rejected = dpo_loss(
            logps[:pairs], logps[pairs:], ref_chosen, ref_rejected,
            beta=self.beta, kind=self.loss_type, label_smoothing=self.label_smoothing,
        )  # fmt: skip
        return losses.mean(), {
            "tokens": pair_tokens(batch),
            "loss_tokens": pairs,
            "reward_accuracy": (chosen > rejected).float().mean(),
            "reward_margin": (chosen - rejected).mean(),
            "reward_chosen": chosen.mean(),
            "reward_rejected": rejected.mean(),
        }

    def reference_logps(
        self, batch: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, pairs: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_chosen_logp" in batch:
            return batch["ref_chosen_logp"].float(), batch["ref_rejected_logp"].float()
        import torch

        assert self.reference_model is not None, "DPO without precomputed reference log-probs needs `reference`"
        with torch.no_grad():
            logps = sequence_logps(self.reference_model(input_ids=ids, use_cache=False).logits, ids, mask,
                                   self.average_logps)  # fmt: skip
        return logps[:pairs], logps[pairs:]

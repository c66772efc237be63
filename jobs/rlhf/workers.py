"""The RLHF roles as worker-group members: actor and critic (trainable, DeepSpeed), reference and reward model
(frozen). Each is built on the driver from plain values (`RoleSetup`), pickled to its Ray actors, and loads its
model in `setup`, after the group's process group exists.

Batches are dicts of tensors at the layout `rollout.Rollout` builds: `input_ids`/`attention_mask` (B, L) hold
prompt + answer, right-padded; per-token tensors are (B, L-1) at action resolution (column t is token t+1) with
`mask` marking answer tokens.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cluster.worker_group import Worker, register
from jobs.rlhf import algorithms as alg
from jobs.train.moe import Routing
from pipelines import storage

if TYPE_CHECKING:
    import torch

DS_TAG = "deepspeed"


@dataclass(frozen=True)
class ActorLoss:
    """How the actor's loss is computed from a micro-batch: PPO's clipped surrogate on per-token advantages, or
    GRPO's on sequence advantages with the KL to the reference in the loss."""

    algorithm: str  # "ppo" | "grpo"
    clip: float
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0

    def __call__(self, logits: torch.Tensor, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        import torch

        mask = mb["mask"]
        logp = alg.token_logps(logits, mb["input_ids"])
        old = mb["old_logp"] if "old_logp" in mb else logp.detach()  # one epoch: on-policy, the ratio is 1
        if self.algorithm == "grpo":
            loss, metrics = alg.grpo_loss(logp, old, mb["ref_logp"], mb["advantages"], mask, clip=self.clip,
                                          kl_coef=self.kl_coef, estimator=self.kl_estimator)  # fmt: skip
        else:
            loss, clipfrac, approx_kl = alg.ppo_actor_loss(logp, old, mb["advantages"], mask, self.clip)
            metrics = {"clipfrac": clipfrac, "approx_kl": approx_kl}
        if self.entropy_coef > 0:
            ent = alg.masked_mean(alg.entropy(logits), mask)
            loss = loss - self.entropy_coef * ent
        else:
            with torch.no_grad():
                ent = alg.masked_mean(alg.entropy(logits), mask)
        return loss, {**metrics, "entropy": ent.detach(), "actor_loss": loss.detach()}


@dataclass(frozen=True)
class RoleSetup:
    """What a role's workers need: where the model is, how to train it (trainable roles) and batch sizes."""

    model_uri: str
    micro_batch_size: int
    seed: int = 0
    pad_token_id: int = 0
    optim: Any = None  # pipelines.spec.train.OptimConfig for trainable roles
    deepspeed: dict[str, Any] = field(default_factory=dict)  # the engine config (jobs.train.deepspeed_config)
    total_steps: int = 1  # optimizer steps over the run, for the LR schedule
    offload_optimizer: bool = False
    activation_checkpointing: bool = False
    actor_loss: ActorLoss | None = None
    value_clip: float = 0.2
    chat_template: str | None = None  # the reward model's, to render prompt + answer
    stop_token_ids: tuple[int, ...] = ()


def micro_batches(batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Consecutive micro-batches, each cut to its longest row (rows are right-padded)."""
    n = len(batch["input_ids"])
    out = []
    for start in range(0, n, size):
        mb = {k: v[start : start + size] for k, v in batch.items() if not isinstance(v, list)}
        width = max(2, int(mb["attention_mask"].sum(-1).max()))
        mb["input_ids"], mb["attention_mask"] = mb["input_ids"][:, :width], mb["attention_mask"][:, :width]
        for key, value in mb.items():
            if value.dim() == 2 and key not in ("input_ids", "attention_mask"):
                mb[key] = value[:, : width - 1]
        out.append(mb)
    return out


class ModelWorker(Worker):
    """A role holding one model: `setup` loads it; forward passes run micro-batch by micro-batch."""

    def __init__(self, rank: int, world_size: int, use_gpu: bool = False, setup: RoleSetup | None = None) -> None:
        super().__init__(rank, world_size, use_gpu)
        assert setup is not None
        self.config = setup
        self.model: Any = None

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device("cuda" if self.use_gpu else "cpu")

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v if isinstance(v, list) else v.to(self.device) for k, v in batch.items()}

    def forward(self, mb: dict[str, torch.Tensor]) -> Any:
        return self.model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], use_cache=False)

    def per_token(self, batch: dict[str, Any], fn: Any) -> torch.Tensor:
        """fn(model output, micro-batch) -> (b, w-1) for every micro-batch, without gradients, padded to (B, L-1)."""
        import torch
        import torch.nn.functional as F

        width = batch["input_ids"].shape[1] - 1
        rows = []
        with torch.inference_mode():
            for mb in micro_batches(self.to_device(batch), self.config.micro_batch_size):
                out = fn(self.forward(mb), mb).float()
                rows.append(F.pad(out, (0, width - out.shape[1])).cpu())
        return torch.cat(rows)


class TrainableWorker(ModelWorker):
    """A role trained with DeepSpeed: the engine is built in `setup`, saved and restored with the checkpoints."""

    def build_engine(self, model: Any) -> None:
        from jobs.train.deepspeed_config import start_engine
        from jobs.train.optim import build_optimizer, scheduler_factory

        cfg = self.config
        model.config.use_cache = False
        self.routing = Routing.attach(model)  # an MoE model's routers: their load-balancing loss joins the role's
        optimizer = build_optimizer(model, cfg.optim, offload=cfg.offload_optimizer)
        schedule = scheduler_factory(cfg.optim, cfg.total_steps)
        self.model = start_engine(model, optimizer, schedule, cfg.deepspeed, cfg.activation_checkpointing)

    def train_epochs(self, batch: dict[str, Any], epochs: int, loss_fn: Any) -> dict[str, float]:
        """`epochs` passes over this rank's slice, one optimizer step per pass (DeepSpeed accumulates the
        micro-batches: gradient_accumulation_steps = slice / micro_batch_size)."""
        sums: dict[str, float] = {}
        count = 0
        self.model.train()
        for _ in range(epochs):
            for mb in micro_batches(self.to_device(batch), self.config.micro_batch_size):
                loss, metrics = self.with_aux_loss(loss_fn, mb)
                self.model.backward(loss)
                self.model.step()
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                count += 1
        norm = self.model.get_global_grad_norm()
        means = {k: v / max(1, count) for k, v in sums.items()}
        if self.routing is not None:  # this rank's expert load; the group's report averages the ranks
            means["expert_load_cv"] = self.routing.load_stats(lambda tensor: None).get("expert_load_cv", 0.0)
        return {**means, "grad_norm": float(norm) if norm is not None else 0.0, "lr": float(self.model.get_lr()[0])}

    def with_aux_loss(self, loss_fn: Any, mb: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """loss_fn(mb), plus for an MoE model the routers' load-balancing loss × its coefficient (as aux_loss)."""
        if self.routing is None:
            return loss_fn(mb)
        self.routing.clear()
        loss, metrics = loss_fn(mb)
        aux = self.routing.aux_loss()
        return loss + self.routing.coef * aux, {**metrics, "aux_loss": aux.detach()}

    @register(dispatch="all", collect="rank_zero")
    def save(self, uri: str) -> str:
        """Every rank writes its DeepSpeed shards (model, optimizer, scheduler) and uploads them to `uri`."""
        local = tempfile.mkdtemp(prefix="llmctl-rlhf-ckpt-")
        try:
            self.model.save_checkpoint(local, tag=DS_TAG)
            storage.upload_dir(local, uri)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        return uri

    @register(dispatch="all", collect="rank_zero")
    def load(self, uri: str) -> str:
        with storage.local_copy(uri) as path:
            loaded, _ = self.model.load_checkpoint(path, tag=DS_TAG, load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)  # fmt: skip
        if loaded is None:
            raise RuntimeError(f"DeepSpeed found no engine state in {uri}")
        return uri


class ActorWorker(TrainableWorker):
    """The policy: sampled answers' log-probs, the policy update, and its weights for the rollout engines."""

    @register(dispatch="all", collect="rank_zero")
    def setup(self) -> int:
        from jobs.train.model import ModelSource

        model = ModelSource(pretrained_uri=self.config.model_uri, pad_token_id=self.config.pad_token_id,
                            stop_token_ids=self.config.stop_token_ids).build(self.config.seed)  # fmt: skip
        self.build_engine(model)
        return sum(p.numel() for p in model.parameters())

    @register(dispatch="split", collect="concat")
    def log_probs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self.model.eval()
        return {"old_logp": self.per_token(batch, lambda out, mb: alg.token_logps(out.logits, mb["input_ids"]))}

    @register(dispatch="split", collect="mean")
    def update(self, batch: dict[str, Any], epochs: int = 1) -> dict[str, float]:
        loss = self.config.actor_loss
        assert loss is not None
        return self.train_epochs(batch, epochs, lambda mb: loss(self.forward(mb).logits, mb))

    @register(dispatch="all", collect="rank_zero")
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full fp32 weights on rank 0 (every rank takes part: under ZeRO-3 they are gathered)."""
        from jobs.train.export import gather_state_dict

        return gather_state_dict(self.model.module, self.rank)

    @register(dispatch="all", collect="rank_zero")
    def export(self, uri: str, tokenizer_uri: str) -> str:
        from jobs.train.export import gather_state_dict, save_hf
        from jobs.train.model import ModelSource

        state = gather_state_dict(self.model.module, self.rank)
        if self.rank == 0:
            source = ModelSource(pretrained_uri=self.config.model_uri, stop_token_ids=self.config.stop_token_ids)
            save_hf(source.exportable(self.model.module.config, state), "float32", tokenizer_uri, uri)
        return uri


class CriticWorker(TrainableWorker):
    """The value model: the policy's backbone with a scalar head per token (LlamaForTokenClassification),
    the head zero-initialised so every value starts at 0."""

    @register(dispatch="all", collect="rank_zero")
    def setup(self) -> int:
        import torch
        from transformers import AutoModelForTokenClassification

        torch.manual_seed(self.config.seed)
        with storage.local_copy(self.config.model_uri) as path:
            model = AutoModelForTokenClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        torch.nn.init.zeros_(model.score.weight)
        if getattr(model.score, "bias", None) is not None:
            torch.nn.init.zeros_(model.score.bias)
        self.build_engine(model)
        return sum(p.numel() for p in model.parameters())

    @register(dispatch="split", collect="concat")
    def values(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self.model.eval()
        return {"values": self.per_token(batch, lambda out, mb: out.logits[:, :-1, 0])}

    @register(dispatch="split", collect="mean")
    def update(self, batch: dict[str, Any], epochs: int = 1) -> dict[str, float]:
        def loss(mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
            values = self.forward(mb).logits[:, :-1, 0].float()
            value_loss, clipfrac = alg.value_loss(values, mb["values"], mb["returns"], mb["mask"],
                                                  self.config.value_clip)  # fmt: skip
            return value_loss, {"value_loss": value_loss.detach(), "value_clipfrac": clipfrac}

        metrics = self.train_epochs(batch, epochs, loss)
        return {k if k.startswith("value") else f"critic_{k}": v for k, v in metrics.items()}


class ReferenceWorker(ModelWorker):
    """A frozen copy of the initial policy: log-probs of the sampled answers under it."""

    @register(dispatch="all", collect="rank_zero")
    def setup(self) -> int:
        from jobs.train.model import ModelSource

        model = ModelSource(pretrained_uri=self.config.model_uri).build(self.config.seed)
        self.model = model.to(self.device).eval().requires_grad_(False)
        return sum(p.numel() for p in model.parameters())

    @register(dispatch="split", collect="concat")
    def log_probs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"ref_logp": self.per_token(batch, lambda out, mb: alg.token_logps(out.logits, mb["input_ids"]))}


class RewardModelWorker(ModelWorker):
    """A frozen reward model (LlamaForSequenceClassification, num_labels=1, as the reward_model stage exports):
    scores each prompt + answer rendered with its own chat template and tokenizer, read at the last token."""

    @register(dispatch="all", collect="rank_zero")
    def setup(self) -> int:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        with storage.local_copy(self.config.model_uri) as path:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        self.model = model.to(self.device).eval().requires_grad_(False)
        return sum(p.numel() for p in model.parameters())

    @register(dispatch="split", collect="concat")
    def score(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        import torch

        from jobs.train.chat_data import ChatTemplate

        template = ChatTemplate(self.config.chat_template or self.tokenizer.chat_template,
                                self.tokenizer.bos_token, self.tokenizer.eos_token)  # fmt: skip
        texts = [template.render([*msgs, {"role": "assistant", "content": answer}])
                 for msgs, answer in zip(batch["prompt_messages"], batch["completions"], strict=True)]  # fmt: skip
        pad = self.model.config.pad_token_id
        scores = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.config.micro_batch_size):
                ids = [
                    self.tokenizer.encode(t, add_special_tokens=False)
                    for t in texts[start : start + self.config.micro_batch_size]
                ]
                width = max(len(i) for i in ids)
                rows = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=self.device)
                mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=self.device)
                scores.append(self.model(input_ids=rows, attention_mask=mask).logits[:, 0].float().cpu())
        return {"scores": torch.cat(scores)}

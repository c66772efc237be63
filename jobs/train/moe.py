"""Mixture-of-experts routing in the training loop: the load-balancing loss and where tokens go.

Every MoE layer's router (transformers' `Qwen3MoeTopKRouter`) returns its logits and the experts it picked per
token. A forward hook on each router keeps them for the step, so the loop adds the load-balancing loss to any
objective's loss (pretraining, SFT, reward model, DPO) without the objective knowing, and counts the tokens each
expert received. The loss is Switch Transformer's, experts × Σ over experts of (fraction of routed tokens) × (mean
router probability), computed per layer and averaged: `experts_per_token` at perfect balance, growing as routing
concentrates. transformers' `load_balancing_loss_func` computes it once over all layers' tokens together, which
counts expert e of one layer and expert e of the next as one expert: two layers overloading different experts
look balanced to it. Per layer, each router is pushed to balance its own experts (bench/moe.py, coefficient 0.01:
the per-layer expert-load coefficient of variation ended at 0.93 with the pooled loss, 0.47 per layer).

Only the latest pass's records are kept. With activation checkpointing the routers run again during backward;
those records are dropped when the next forward pass starts (`clear`), so each step counts its tokens once.
"""

from __future__ import annotations

from typing import Any

ROUTER_CLASS = "Qwen3MoeTopKRouter"
BLOCK_CLASS = "Qwen3MoeSparseMoeBlock"


def is_moe(config: Any) -> bool:
    """Whether a transformers config (or its config.json as a dict) describes a model with routed experts."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    experts = get("num_experts") or get("num_local_experts") or 0  # config.json spells it num_local_experts
    return experts > 1 and get("num_experts_per_tok") is not None


class Routing:
    """The routers of one model: what they did since `clear`, and the expert load since the last `load_stats`."""

    def __init__(self, routers: list[Any], num_experts: int, top_k: int, coef: float) -> None:
        self.num_experts, self.top_k, self.coef = num_experts, top_k, coef
        self.layers = len(routers)
        self.logits: list[Any] = []  # one (tokens, experts) tensor per router call of the current forward pass
        self.picked: list[Any] = []  # its (tokens, top_k) expert indices
        self.counts: Any = None  # (layers, experts) tokens routed since the last load_stats, on the device
        self.last_load: dict[str, Any] = {}  # the last load_stats
        for router in routers:
            router.register_forward_hook(self._record)

    @classmethod
    def attach(cls, model: Any) -> Routing | None:
        """Hooks on every router of `model` (a transformers model, possibly wrapped by peft); None when dense."""
        config = model.config
        if not is_moe(config):
            return None
        routers = [m for m in model.modules() if type(m).__name__ == ROUTER_CLASS]
        if not routers:
            raise RuntimeError(f"{type(model).__name__} says it has experts but no {ROUTER_CLASS} module was found")
        coef = float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)
        return cls(routers, config.num_experts, config.num_experts_per_tok, coef)

    def _record(self, module: Any, inputs: Any, output: Any) -> None:
        logits, _, picked = output
        self.logits.append(logits)
        self.picked.append(picked.detach())
        if len(self.logits) > self.layers:  # only the latest pass is read: inference passes keep nothing more
            del self.logits[0], self.picked[0]

    def clear(self) -> None:
        self.logits, self.picked = [], []

    def aux_loss(self, count: bool = True) -> Any:
        """The load-balancing loss of the forward pass just run (over every MoE layer); `count` adds its tokens to
        the expert load."""
        import torch
        from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

        assert self.logits, "aux_loss called before a forward pass through the routers"
        layers = self.logits[-self.layers :]  # the last pass's, should a caller have run several
        loss = torch.stack([load_balancing_loss_func((x,), self.num_experts, self.top_k) for x in layers]).mean()
        if count:
            picked = torch.stack([p.reshape(-1, self.top_k) for p in self.picked[-self.layers :]])  # (layers, T, k)
            routed = torch.nn.functional.one_hot(picked, self.num_experts).sum(dim=(1, 2))  # (layers, experts)
            self.counts = routed if self.counts is None else self.counts + routed
        self.clear()
        return loss

    def load_stats(self, all_reduce: Any) -> dict[str, Any]:
        """Tokens per expert and layer since the last call, summed over ranks by `all_reduce` (a callable that
        sums a tensor in place), as shares of the layer's routed tokens; and their coefficient of variation (std /
        mean of the counts), per layer and averaged. Empty when nothing was routed."""
        if self.counts is None:
            return {}
        counts = self.counts.double()
        all_reduce(counts)
        self.counts = None
        totals = counts.sum(dim=1, keepdim=True).clamp(min=1)
        cv = counts.std(dim=1, unbiased=False) / counts.mean(dim=1).clamp(min=1e-9)
        self.last_load = {
            "expert_load": (counts / totals).tolist(),  # (layers, experts), each row sums to 1
            "expert_load_cv_per_layer": cv.tolist(),
            "expert_load_cv": float(cv.mean()),
            "routed_tokens": int(counts[0].sum().item()) // self.top_k,  # each layer routes every token
        }
        return self.last_load

    def log_load(self, all_reduce: Any, tensorboard: Any, step: int) -> dict[str, Any]:
        """The expert load since the last log: its coefficient of variation for the logged metrics, and each
        layer's share per expert to TensorBoard (`expert_load/layer<i>/expert<j>`, the report's heat map)."""
        if self.counts is None:  # nothing routed since the last log (every rank alike: they step together)
            return {"expert_load_cv": self.last_load.get("expert_load_cv")}
        stats = self.load_stats(all_reduce)
        shares = {f"expert_load/layer{i}/expert{j}": share for i, row in enumerate(stats["expert_load"])
                  for j, share in enumerate(row)}  # fmt: skip
        tensorboard.log(step, shares)
        return {"expert_load_cv": stats["expert_load_cv"]}

    def summary(self) -> dict[str, Any]:
        """For the stage's final metrics: the last expert load (layers × experts shares) and its variation."""
        return {key: self.last_load.get(key) for key in ("expert_load", "expert_load_cv")}


def set_zero3_leaf_modules(model: Any) -> None:
    """Under ZeRO-3, make each MoE block one unit whose parameters are gathered together before it runs.

    DeepSpeed fetches parameters from sub-modules' forward hooks. With one module per expert (transformers 4, and
    DeepSpeed's own advice for Mixtral), an expert that receives no tokens on some rank is not called there and the
    ranks' gathers stop matching: a hang. transformers 5 keeps a layer's experts in two fused parameters, which
    every rank's forward reaches; as a leaf, the block (router and experts) is still gathered once at its entry,
    whatever the experts implementation does inside."""
    from deepspeed.utils import set_z3_leaf_modules

    blocks = {type(m) for m in model.modules() if type(m).__name__ == BLOCK_CLASS}
    if blocks:
        set_z3_leaf_modules(model, list(blocks))


def checkpoint_layout(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with each layer's fused expert tensors split into the per-expert names Hugging Face checkpoints use
    (what `save_pretrained` writes and vLLM's weight loader reads): `experts.gate_up_proj` (experts, 2 × width,
    hidden) becomes `experts.<e>.gate_proj.weight` and `experts.<e>.up_proj.weight`, `experts.down_proj` becomes
    `experts.<e>.down_proj.weight`. Other tensors pass through; a dense model's state is returned as it is."""
    out: dict[str, Any] = {}
    for name, tensor in state.items():
        prefix, _, leaf = name.rpartition(".")
        if not prefix.endswith("mlp.experts") or leaf not in ("gate_up_proj", "down_proj"):
            out[name] = tensor
        elif leaf == "gate_up_proj":
            gate, up = tensor.chunk(2, dim=1)  # the forward pass splits each expert's output the same way
            for e in range(tensor.shape[0]):
                out[f"{prefix}.{e}.gate_proj.weight"], out[f"{prefix}.{e}.up_proj.weight"] = gate[e], up[e]
        else:
            out.update({f"{prefix}.{e}.down_proj.weight": tensor[e] for e in range(tensor.shape[0])})
    return out

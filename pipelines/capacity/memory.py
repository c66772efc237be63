"""Memory and FLOPs arithmetic for Llama-architecture models and their Qwen3-MoE variant (the shapes llmctl
trains and serves).

Model states follow DeepSpeed's own estimators (`estimate_zero2/3_model_states_mem_needs`): in mixed precision
a parameter costs 2 bytes of 16-bit weights plus 18 bytes of training state (16-bit and fp32 gradients, fp32
master weights, Adam's two moments), and each ZeRO stage shards more of it over the data-parallel ranks.
Activations count the tensors autograd keeps per token and layer (flash-style attention: no sequence² scores),
plus the logits the loss reads; checkpointing keeps one hidden state per layer and recomputes one layer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class Shape:
    """The dimensions of a Llama-architecture model; with `experts`, `moe_layers` of its layers have routed
    expert MLPs (each `expert_intermediate` wide, `experts_per_token` of them per token) instead of the dense one."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool = True
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    moe_layers: int = 0

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    @property
    def attention_params(self) -> int:
        return 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_dim

    @property
    def layer_params(self) -> int:
        """Parameters of a dense layer."""
        return self.attention_params + 3 * self.hidden * self.intermediate + 2 * self.hidden  # + two RMSNorms

    def moe_layer_params(self, experts: int) -> int:
        """Parameters of an MoE layer counting `experts` experts (all of them, or the active ones) and the router."""
        mlp = experts * 3 * self.hidden * self.expert_intermediate + self.hidden * self.experts
        return self.attention_params + mlp + 2 * self.hidden

    def layers_params(self, active: bool = False) -> int:
        """Parameters of all decoder layers; `active`: only those a token runs through."""
        dense = (self.layers - self.moe_layers) * self.layer_params
        return dense + self.moe_layers * self.moe_layer_params(self.experts_per_token if active else self.experts)

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers_params() + self.hidden  # + the final norm

    @property
    def active_params(self) -> int:
        """Parameters a token runs through (an MoE model's experts_per_token experts per layer)."""
        return self.params - self.layers_params() + self.layers_params(active=True)

    @property
    def largest_layer(self) -> int:
        """Parameters of the largest single tensor (what ZeRO-3 gathers at once): the embedding, an MLP matrix, or
        an MoE layer's fused gate-and-up projections of every expert (transformers keeps them in one tensor)."""
        fused = 2 * self.experts * self.expert_intermediate * self.hidden
        return max(self.vocab * self.hidden, self.hidden * self.intermediate, fused)

    def lora_params(self, rank: int, targets: list[str]) -> int:
        """Adapter parameters: r × (in + out) per targeted projection and layer."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        sizes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                 "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip
        return self.layers * sum(rank * sum(sizes[t]) for t in targets if t in sizes)

    def weight_bytes(self, linear_bytes: float = 2.0) -> float:
        """Bytes of the weights with the layers' linear projections stored at `linear_bytes` per parameter (a
        quantized model: 1 for int8 or FP8, ~0.5 for int4) and the rest (embeddings, norms) in 16 bits."""
        linear = self.layers_params() - self.layers * 2 * self.hidden
        return linear * linear_bytes + (self.params - linear) * 2

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        return 2 * self.layers * self.kv_dim * bytes_per_value  # keys and values of every layer


def weight_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def model_states(params: int, largest_layer: int, zero: int, ranks: int, precision: str = "bf16",
                 offload_optimizer: bool = False, offload_params: bool = False) -> float:  # fmt: skip
    """Bytes of weights, gradients and optimizer state per data-parallel rank (device memory)."""
    if precision == "fp32":  # no master copy: 4 B weights, 4 B gradients, 8 B Adam moments
        weights, grads, state = 4, 4, 8
    else:  # DeepSpeed's accounting: 2 B 16-bit weights + 18 B (2 grads16, 4 grads32, 4 master, 8 moments)
        weights, grads, state = 2, 2, 16
    if zero == 0:
        return float(params * (weights + grads + state))
    if zero in (1, 2):
        if offload_optimizer:
            return float(params * weights)
        replicated = weights + (grads if zero == 1 else 0)
        return params * replicated + params * (state + (0 if zero == 1 else grads)) / ranks
    gathered = 4 * largest_layer  # ZeRO-3 assembles one module's full weights at a time
    if offload_params:
        return float(gathered)
    if offload_optimizer:
        return gathered + params * weights / ranks
    # DeepSpeed's ZeRO-3 estimator shards 18 B/param in mixed precision: its fp32 master copy stands in for the
    # 16-bit shard. In fp32 there is no master copy, so the weights' own shard counts.
    sharded = grads + state if precision != "fp32" else weights + grads + state
    return gathered + params * sharded / ranks


def activation_bytes_per_token(shape: Shape, precision: str, checkpointing: bool) -> float:
    """Bytes autograd keeps per token of a micro-batch for the backward pass.

    Per layer: the two RMSNorm inputs and outputs, queries, keys, values and the attention output (4h + 2kv),
    and the MLP's gate, up, SiLU(gate) and their product (4i; per routed expert in an MoE layer), in the training
    dtype. The loss keeps its fp32 log-softmax over the vocabulary (4 × vocab; the logits themselves are not kept).
    Checkpointing keeps one hidden state per layer and, during backward, one layer's recomputed activations at a
    time.
    """
    w = weight_bytes(precision)
    h, kv, i = shape.hidden, shape.kv_dim, shape.intermediate
    dense = w * (8 * h + 2 * kv + 4 * i)
    # An MoE layer keeps the MLP activations and the output of each of the token's experts, and the router's logits.
    moe = w * (8 * h + 2 * kv + shape.experts_per_token * (4 * shape.expert_intermediate + h) + shape.experts)
    if checkpointing:
        layers = shape.layers * w * h + (max(dense, moe) if shape.moe_layers else dense)
    else:
        layers = (shape.layers - shape.moe_layers) * dense + shape.moe_layers * moe
    return float(layers + 4 * shape.vocab + 2 * w * h)  # + the embeddings' output and the final norm's input


def train_flops_per_token(shape: Shape, seq_len: int, checkpointing: bool) -> float:
    """Forward + backward FLOPs per token: 6 per matmul parameter plus attention (PaLM, appendix B); recomputing
    activations adds another forward (8 instead of 6)."""
    matmul = shape.layers_params(active=True) - shape.layers * 2 * shape.hidden + shape.vocab * shape.hidden
    factor = 8.0 if checkpointing else 6.0
    return factor * matmul + factor * 2 * shape.layers * shape.hidden * seq_len


def forward_flops_per_token(shape: Shape) -> float:
    return 2.0 * (shape.layers_params(active=True) + shape.vocab * shape.hidden)


def hours(flops: float, gpus: int, peak_tflops: float, mfu: float) -> float:
    """Wall time at a model-FLOPs utilisation: FLOPs / (GPUs × peak × MFU)."""
    return flops / (gpus * peak_tflops * 1e12 * mfu) / 3600

"""Per-stage estimates: memory per GPU (or per CPU worker), GPUs occupied, and hours at an assumed MFU.

Each estimator reads only the stage's spec and the model shape it starts from; `estimate_pipeline` maps stage
kinds to estimators by their spec's base class. Stages that run on CPUs only (curation, tokenizer, eval) get none.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pipelines.capacity import memory
from pipelines.capacity.devices import Cluster, Device
from pipelines.capacity.memory import GIB, Shape
from pipelines.capacity.models import shape_of
from pipelines.spec.base import vllm_memory_fraction

DEFAULT_MFU = 0.40
# The shape used when a stage's model cannot be read at plan time (an s3:// directory): no memory, no FLOPs, but
# the GPUs and bundles the stage asks for are still checked against the cluster.
UNKNOWN_SHAPE = Shape(vocab=0, hidden=0, layers=0, heads=1, kv_heads=1, intermediate=0)


@dataclass(frozen=True)
class Part:
    """One role's memory on each device it occupies (a training group, a frozen model, a vLLM engine)."""

    role: str
    params: int
    model_states_gib: float
    activations_gib: float = 0.0
    activations_ckpt_gib: float = 0.0
    vllm_gib: float = 0.0
    gpus: int = 0
    bundle_gpus: float = 0.0  # GPUs one worker (or one tensor-parallel engine) needs on a single node
    vllm_min_gib: float = 0.0  # an engine's weights plus one longest sequence's KV cache, per device

    @property
    def total_gib(self) -> float:
        return self.model_states_gib + self.activations_gib + self.vllm_gib


@dataclass(frozen=True)
class Estimate:
    params: int
    model_states_gib: float
    activations_gib: float
    activations_ckpt_gib: float
    vllm_gib: float
    total_gib_per_gpu: float
    gpus: int
    hours: float | None
    on_gpu: bool
    bundle_gpus: float = 0.0
    vllm_min_gib: float = 0.0
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_known: bool = True  # False: sizes unknown at plan time, only GPU counts and bundles are estimated

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.model_known:
            out["params"] = None
        for key in ("model_states_gib", "activations_gib", "activations_ckpt_gib", "vllm_gib", "total_gib_per_gpu"):
            out[key] = round(out[key], 2)
        out["hours"] = None if self.hours is None else round(self.hours, 3)
        return out


def combine(parts: list[Part], colocated: list[str], flops: float, device: Device | None, mfu: float,
            on_gpu: bool) -> Estimate:  # fmt: skip
    """Roles in `colocated` share devices (their memory adds up); every other role has devices of its own."""
    shared = [p for p in parts if p.role in colocated]
    alone = [p for p in parts if p.role not in colocated]
    per_device = [sum(p.total_gib for p in shared)] if shared else []
    per_device += [p.total_gib for p in alone]
    gpus = max((p.gpus for p in shared), default=0) + sum(p.gpus for p in alone)
    main = parts[0]
    hours = memory.hours(flops, gpus, device.bf16_tflops, mfu) if on_gpu and device and gpus and flops else None
    return Estimate(
        params=main.params,
        model_states_gib=sum(p.model_states_gib for p in shared) if main in shared else main.model_states_gib,
        activations_gib=max(p.activations_gib for p in parts),
        activations_ckpt_gib=max(p.activations_ckpt_gib for p in parts),
        vllm_gib=max(p.vllm_gib for p in parts),
        total_gib_per_gpu=max(per_device),
        gpus=gpus,
        hours=hours,
        on_gpu=on_gpu,
        bundle_gpus=max(p.bundle_gpus for p in parts),
        vllm_min_gib=max(p.vllm_min_gib for p in parts),
        roles={p.role: {**asdict(p), "total_gib": round(p.total_gib, 2)} for p in parts} if len(parts) > 1 else {},
    )


def trainer(role: str, shape: Shape, ds: Any, scaling: Any, seqs: int, seq_len: int, lora: Any = None) -> Part:
    """A DeepSpeed training group: model states sharded over its ranks, activations of one micro-batch."""
    ranks = scaling.num_workers
    precision = ds.resolved_precision(scaling.use_gpu)
    zero = ds.resolved_stage(ranks)
    if lora is not None:  # frozen base weights plus the adapters' full training state
        trainable = shape.lora_params(lora.rank, lora.target_modules)
        adapters = memory.model_states(trainable, 0, zero, ranks, precision)
        states = shape.params * memory.weight_bytes(precision) + adapters
    else:
        states = memory.model_states(shape.params, shape.largest_layer, zero, ranks, precision,
                                     ds.offload_optimizer, ds.offload_params)  # fmt: skip
    tokens = seqs * seq_len

    def acts(checkpointing: bool) -> float:
        return memory.activation_bytes_per_token(shape, precision, checkpointing) * tokens / GIB

    active = acts(ds.activation_checkpointing)
    return Part(role, shape.params, states / GIB, active, acts(True), 0.0, _gpus(scaling), _bundle(scaling))


def frozen(role: str, shape: Shape, scaling: Any, precision: str) -> Part:
    """A model that only runs forward passes: its weights (activations of inference are small)."""
    return Part(role, shape.params, shape.params * memory.weight_bytes(precision) / GIB, gpus=_gpus(scaling),
                bundle_gpus=_bundle(scaling))  # fmt: skip


def vllm_engine(role: str, shape: Shape, device: Device | None, use_gpu: bool, fraction: float | None,
                kv_cache_bytes: int | None, tensor_parallel: int, engines: int, max_len: int,
                linear_bytes: float = 2.0) -> Part:  # fmt: skip
    """vLLM claims a fraction of each device (weights + KV cache + its activations); an exact KV size instead
    claims the weights plus that cache. It starts only if the weights and one `max_len` sequence fit in it.
    `linear_bytes`: bytes per parameter of the layers' projections (below 2 for a quantized model)."""
    weights = shape.weight_bytes(linear_bytes) / tensor_parallel
    smallest = weights + shape.kv_bytes_per_token() * max_len / tensor_parallel
    if kv_cache_bytes is not None and not (use_gpu and fraction):
        claimed = weights + kv_cache_bytes / tensor_parallel
    elif use_gpu and device is not None:
        claimed = vllm_memory_fraction(fraction, True) * device.memory_gib * GIB
    else:
        claimed = weights  # a share of host memory the plan does not know: show the weights
    gpus = engines * tensor_parallel if use_gpu else 0
    bundle = tensor_parallel if use_gpu else 0
    return Part(role, shape.params, 0.0, vllm_gib=claimed / GIB, gpus=gpus, bundle_gpus=bundle,
                vllm_min_gib=smallest / GIB)  # fmt: skip


def _gpus(scaling: Any) -> int:
    return math.ceil(scaling.num_workers * scaling.gpus_per_worker) if scaling.use_gpu else 0


def _bundle(scaling: Any) -> float:
    return scaling.gpus_per_worker if scaling.use_gpu else 0.0


def estimate_pipeline(stages: dict[str, Any], cluster: Cluster | None, mfu: float = DEFAULT_MFU) -> dict[str, Any]:
    """Stage name -> Estimate, or a string saying why there is none."""
    from pipelines.capacity import stages as kinds

    device = cluster.device if cluster else None
    out: dict[str, Any] = {}
    for name, stage in stages.items():
        estimator = kinds.estimator_for(stage)
        if estimator is None:
            out[name] = "CPU only"
            continue
        shape = shape_of(stages, kinds.model_ref(stage, name))
        est = estimator(stage, shape or UNKNOWN_SHAPE, stages, device, mfu)
        out[name] = est if shape else replace(est, model_known=False)
    return out

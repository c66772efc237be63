"""Which estimate each stage kind gets, by the base class of its spec: training, RLHF, serving or quantization."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pipelines.capacity import memory
from pipelines.capacity.devices import Device
from pipelines.capacity.estimate import GIB, Estimate, Part, combine, frozen, trainer, vllm_engine
from pipelines.capacity.memory import Shape
from pipelines.capacity.models import shape_of
from pipelines.spec.post import PostTrainStage
from pipelines.spec.quantize import QuantizeStage
from pipelines.spec.rlhf import RLHFStage
from pipelines.spec.serve import ServeStage
from pipelines.spec.train import PretrainStage

QUANTIZED_BYTES = {"w8a8-int8": 1.0, "fp8-dynamic": 1.0, "w4a16": 0.5 + 2 / 128}  # int4 plus a 16-bit scale per group
Estimator = Callable[[Any, Shape, dict[str, Any], Device | None, float], Estimate]


def train(stage: Any, shape: Shape, stages: dict[str, Any], device: Device | None, mfu: float) -> Estimate:
    """pretrain, sft, reward_model, dpo, distill: one group of workers, plus the frozen models they read."""
    sched, scaling = stage.schedule, stage.scaling
    pairs = 2 if stage.kind == "dpo" else 1  # a preference micro-batch holds chosen and rejected sequences
    parts = [trainer("train", shape, stage.deepspeed, scaling, sched.micro_batch_size * pairs, sched.seq_len,
                     getattr(stage, "lora", None))]  # fmt: skip
    precision = stage.deepspeed.resolved_precision(scaling.use_gpu)
    extra_forward = 0.0
    for role, other in _frozen_models(stage, shape, stages):
        parts.append(frozen(role, other, scaling, precision))
        extra_forward += memory.forward_flops_per_token(other)
    tokens = sched.steps * sched.micro_batch_size * sched.grad_accum * scaling.num_workers * sched.seq_len * pairs
    per_token = memory.train_flops_per_token(shape, sched.seq_len, stage.deepspeed.activation_checkpointing)
    roles = [p.role for p in parts]
    return combine(parts, roles, tokens * (per_token + extra_forward), device, mfu, scaling.use_gpu)


def _frozen_models(stage: Any, shape: Shape, stages: dict[str, Any]) -> list[tuple[str, Shape]]:
    if stage.kind == "dpo" and stage.reference_logprobs == "on_the_fly":
        return [("reference", shape)]
    if stage.kind == "distill" and stage.mode == "white_box":
        teacher = shape_of(stages, stage.teacher)
        return [("teacher", teacher)] if teacher else []
    return []


def rlhf(stage: Any, shape: Shape, stages: dict[str, Any], device: Device | None, mfu: float) -> Estimate:
    """grpo, ppo: actor (and critic) groups, a frozen reference (and reward model), and the rollout engines."""
    rollout, length = stage.rollout, stage.max_prompt_len + stage.rollout.max_new_tokens
    parts = [trainer("actor", shape, stage.deepspeed, stage.actor, stage.micro_batch_size, length)]
    if stage.kind == "ppo":
        parts.append(trainer("critic", shape, stage.deepspeed, stage.critic, stage.micro_batch_size, length))
    precision = stage.deepspeed.resolved_precision(stage.reference.use_gpu)
    parts.append(frozen("reference", shape, stage.reference, precision))
    reward = shape_of(stages, stage.reward_model) if stage.reward_model else None
    if reward is not None:
        parts.append(frozen("reward", reward, stage.reward, stage.deepspeed.resolved_precision(stage.reward.use_gpu)))
    if rollout.backend == "vllm":
        max_len = rollout.max_model_len or length
        parts.append(vllm_engine("rollout", shape, device, rollout.use_gpu, rollout.gpu_memory_utilization,
                                 rollout.kv_cache_bytes, 1, rollout.num_engines, max_len))  # fmt: skip
    else:
        engines = stage.actor.model_copy(update={"num_workers": rollout.num_engines, "use_gpu": rollout.use_gpu})
        parts.append(frozen("rollout", shape, engines, "bf16" if rollout.use_gpu else "fp32"))
    samples = stage.steps * stage.prompts_per_step * stage.num_samples
    trained = 2 if stage.kind == "ppo" else 1
    per_sample = (length * (stage.epochs * trained * memory.train_flops_per_token(shape, length, False)
                            + memory.forward_flops_per_token(shape) * (2 + (reward is not None)))
                  + rollout.max_new_tokens * memory.forward_flops_per_token(shape))  # fmt: skip
    colocated = ["actor", "critic", "reference", "reward"] if stage.placement == "colocated" else []
    return combine(parts, colocated, samples * per_sample, device, mfu, stage.actor.use_gpu)


def serve(stage: Any, shape: Shape, stages: dict[str, Any], device: Device | None, mfu: float) -> Estimate:
    """max_replicas replicas of tensor_parallel_size GPUs each (the most the app can occupy)."""
    engine, placement = stage.engine, stage.placement
    source = stages.get(stage.model)
    linear_bytes = QUANTIZED_BYTES[source.scheme] if isinstance(source, QuantizeStage) else 2.0
    part = vllm_engine("serve", shape, device, placement.use_gpu, engine.gpu_memory_utilization,
                       engine.kv_cache_bytes, engine.tensor_parallel_size, stage.autoscaling.max_replicas,
                       engine.max_model_len or 0, linear_bytes)  # fmt: skip
    return combine([part], [], 0.0, device, mfu, placement.use_gpu)


def quantize(stage: Any, shape: Shape, stages: dict[str, Any], device: Device | None, mfu: float) -> Estimate:
    """One task: the 16-bit model, and for a calibrated scheme GPTQ's Hessians of one layer (one square matrix of
    its input width per projection, fp32) and the calibration samples' activations at that layer (fp32, the
    layer's input and output). Minutes, not hours: the table shows no time."""
    part = Part("quantize", shape.params, shape.params * 2 / GIB, gpus=int(stage.use_gpu),
                bundle_gpus=float(stage.use_gpu))  # fmt: skip
    cal = stage.calibration
    if cal is not None:
        h, i = shape.hidden, shape.intermediate
        hessians = (6 * h * h + i * i) * 4  # q, k, v, gate, up see the hidden width, o the hidden, down the MLP's
        activations = 2 * cal.samples * cal.seq_len * h * 4
        part = replace(part, activations_gib=(hessians + activations) / GIB)
    return combine([part], [], 0.0, device, mfu, stage.use_gpu)


ESTIMATORS: tuple[tuple[type, Estimator], ...] = (
    (PretrainStage, train), (PostTrainStage, train), (RLHFStage, rlhf), (ServeStage, serve), (QuantizeStage, quantize),
)  # fmt: skip


def estimator_for(stage: Any) -> Estimator | None:
    return next((fn for cls, fn in ESTIMATORS if isinstance(stage, cls)), None)


def model_ref(stage: Any, name: str) -> str | None:
    """The model whose shape the stage's estimate uses: its own for pretrain, else the one it starts from."""
    return name if isinstance(stage, PretrainStage) else getattr(stage, "model", None)

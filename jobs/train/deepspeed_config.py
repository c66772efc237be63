"""The DeepSpeed engine a training stage runs with: its config built from the spec (a plain dict; deepspeed is
imported only when an engine starts)."""

from __future__ import annotations

from typing import Any

from pipelines.spec.train import DeepSpeedConfig, OptimConfig, ScheduleConfig

# DeepSpeed prints a line every `steps_per_print` steps; our loop logs on its own cadence.
NEVER = 2**31 - 1


def build(
    ds: DeepSpeedConfig, optim: OptimConfig, schedule: ScheduleConfig, num_workers: int, use_gpu: bool
) -> dict[str, Any]:
    """The full DeepSpeed config; the optimizer and LR schedule are passed to deepspeed.initialize as objects."""
    precision = ds.resolved_precision(use_gpu)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": schedule.micro_batch_size,
        "gradient_accumulation_steps": schedule.grad_accum,
        "train_batch_size": schedule.micro_batch_size * schedule.grad_accum * num_workers,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": zero_section(ds, ds.resolved_stage(num_workers), use_gpu),
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16, "hysteresis": 2},
        # Our AdamW is torch's (or DeepSpeedCPUAdam when offloading); DeepSpeed only vouches for its own.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": NEVER,
        "wall_clock_breakdown": False,
    }
    return merge(config, ds.overrides)


def zero_section(ds: DeepSpeedConfig, stage: int, use_gpu: bool) -> dict[str, Any]:
    section: dict[str, Any] = {"stage": stage}
    if stage > 0:
        section["contiguous_gradients"] = True
        section["overlap_comm"] = use_gpu  # overlapping only pays off with a separate comm stream (CUDA)
    offload = {"device": "cpu", "pin_memory": use_gpu}  # pinned host memory needs a CUDA device
    if ds.offload_optimizer:
        section["offload_optimizer"] = dict(offload)
    if ds.offload_params:
        section["offload_param"] = dict(offload)
    return section


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `overrides` merged into `base`, recursing into nested dicts."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def start_engine(
    model: Any, optimizer: Any, lr_scheduler: Any, config: dict[str, Any], activation_checkpointing: bool = False
) -> Any:
    """deepspeed.initialize, returning the engine. With one data-parallel rank and no ZeRO, nothing is averaged,
    yet DeepSpeed would still flatten every gradient into a buffer, all-reduce it over a group of one and copy it
    back (~4 % of a tiny model's step on CPU): that pass is switched off."""
    import deepspeed

    _without_shm_comm_op_on_cpu()
    if config.get("zero_optimization", {}).get("stage") == 3:
        from jobs.train.moe import set_zero3_leaf_modules

        set_zero3_leaf_modules(model)
    if activation_checkpointing:  # non-reentrant: works with frozen inputs (LoRA) and ZeRO-3's gathered weights
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, config=config)
    if engine.dp_world_size == 1 and engine.zero_optimization_stage() == 0:
        engine.enable_backward_allreduce = False
    return engine


def _without_shm_comm_op_on_cpu() -> None:
    """On CPU, DeepSpeed's communication backend JIT-compiles a shared-memory all-reduce op at start-up (C++ with
    ninja: one to four minutes on 2 cores, and again whenever another Python environment built it last) after
    probing every op's compiler. Only its inference all-reduce uses that op; training's collectives go through
    torch.distributed (gloo). The probe's result is a module attribute that DeepSpeed reads in exactly one place
    (comm/torch.py, build_shm_op); setting it first, with no op marked compatible, skips both probe and build."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu" and "__compatible_ops__" not in vars(deepspeed.ops):
        deepspeed.ops.__compatible_ops__ = {}

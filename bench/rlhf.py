"""RLHF benchmark: llmctl `grpo` against TRL's `GRPOTrainer` on the same problem, in the same run; prints JSON,
the figures on the last line.

Both train the same tiny random chat Llama (tokenizer trained on the demo chat data, no downloads) on the same
prompts with the same rule reward (`jobs.rlhf.rewards:target_length`: answers of one word score best), the same
samples per step (prompts × answers per prompt), answer length, sampling temperature, optimizer, learning rate,
clipping and KL term (k3, coefficient 0.04, TRL's loss_type "grpo": per-answer token mean, then batch mean).
llmctl runs its roles as Ray worker groups with the `generate` rollout backend (a transformers model sampled by
llmctl's own decode loop; TRL without vLLM calls transformers' `generate`); TRL runs in this process on the same
CPUs. llmctl runs twice: on-policy (sample, then train, as TRL does) and with `rollout.off_policy_steps: 1`, where
the rollout group samples the next step's answers while the actor trains on this step's, a one-update lag that
separate worker groups make possible.

Reported per side: steps/s over the training steps (start-up excluded: worker groups and model loading for llmctl,
trainer construction for TRL), mean reward of the first and of the last `--window` steps, and wall time including
start-up. `ratio` = llmctl steps/s ÷ TRL steps/s, off-policy (`ratio_on_policy`: the on-policy run's), the median
over `--rounds` rounds, each of which runs the three back to back (the machine's speed drifts over minutes, so a
ratio is taken within a round). Target: >= 1.5 with a last-steps reward at least TRL's: `reward_at_least_trl` compares
the means as they are, `reward_equal_or_better` allows a shortfall under two standard errors of the difference.

Usage: .venv/bin/python -m bench.rlhf [--steps 30] [--prompts 4] [--samples 4] [--address HOST:PORT]
Needs TRL (`pip install -e ".[bench]"`). Without --address it starts a private Ray head and stops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.pretrain import Cluster  # noqa: E402
from jobs import tokenizer as tokenizer_stage  # noqa: E402
from jobs.context import StageContext  # noqa: E402
from jobs.rlhf import rewards  # noqa: E402
from pipelines.spec.train import TokenizerStage  # noqa: E402

REWARD_KWARGS = {"words": 1, "per_word": 0.1}
KL_COEF = 0.04
PHASES = ("generate_s", "score_s", "update_s", "sync_s")  # llmctl's mean seconds per step in each phase


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps of each side (K)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of TRL, llmctl on- and off-policy; medians reported")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--samples", type=int, default=4, help="answers per prompt (the GRPO group)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--window", type=int, default=5, help="steps averaged for the first/last reward")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the TRL process")
    p.add_argument("--address", help="an existing Ray cluster (GCS address) instead of a private head")
    return p.parse_args()


# --- inputs ---------------------------------------------------------------------------------------------------


def chat_model(work: str) -> tuple[str, str]:
    """(model dir, prompt file): a random tiny chat Llama whose generation stops at <|im_end|>, and chat data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.demo.chat import write_demo_chat
    from jobs.train import post
    from jobs.train.export import copy_tokenizer
    from jobs.train.model import ModelSource, model_config
    from jobs.train.sources import tokenizer_info
    from pipelines.spec.train import ModelConfig

    chat = os.path.join(work, "chat")
    write_demo_chat(chat, n_sft=400, n_pairs=400, seed=0)
    text = os.path.join(work, "chat-text", "data")
    os.makedirs(text)
    lines = [line for name in ("sft.jsonl", "preference.jsonl") for line in open(os.path.join(chat, name))]
    pq.write_table(pa.table({"text": lines}), os.path.join(text, "part-0.parquet"))
    tok = os.path.join(work, "tokenizer")
    spec = TokenizerStage(kind="tokenizer", data=os.path.dirname(text), vocab_size=512)
    tokenizer_stage.run(StageContext("tokenizer", "tokenizer", spec, "t", "r", "k", tok))
    info = tokenizer_info(tok, "tokenizer")
    model = ModelSource(config=model_config(ModelConfig(preset="tiny"), info, seq_len=128)).build(seed=0)
    model.generation_config.eos_token_id = [info.eos_id, *post.stop_tokens(info, "model")]
    out = os.path.join(work, "model")
    model.save_pretrained(out)
    copy_tokenizer(tok, out)
    return out, os.path.join(chat, "sft.jsonl")


def first_last(rewards_per_step: list[float], window: int) -> dict[str, float]:
    """Mean reward of the first and the last `window` steps, and the standard error of the last (over its steps)."""
    last = rewards_per_step[-window:]
    return {
        "reward_first": round(statistics.fmean(rewards_per_step[:window]), 4),
        "reward_last": round(statistics.fmean(last), 4),
        "reward_last_se": round(statistics.stdev(last) / len(last) ** 0.5, 4) if len(last) > 1 else None,
    }


# --- llmctl ---------------------------------------------------------------------------------------------------


def run_llmctl(args: argparse.Namespace, model: str, prompts: str, work: str, off_policy: int) -> dict[str, Any]:
    from jobs.rlhf import stage
    from pipelines.spec.rlhf import GRPOStage

    batch = args.prompts * args.samples
    spec = GRPOStage(
        kind="grpo", model=model, prompts=prompts, steps=args.steps, prompts_per_step=args.prompts,
        num_samples=args.samples, micro_batch_size=batch, max_prompt_len=96, checkpoint_every=args.steps,
        reward_function="jobs.rlhf.rewards:target_length", reward_kwargs=REWARD_KWARGS,
        kl={"coef": KL_COEF, "estimator": "k3"},
        optim={"lr": args.lr, "min_lr": args.lr, "warmup_steps": 0, "beta2": 0.999},
        rollout={"backend": "generate", "max_new_tokens": args.max_new_tokens, "off_policy_steps": off_policy},
        actor={"cpus_per_worker": 0.5}, reference={"cpus_per_worker": 0.5},
    )  # fmt: skip
    out = os.path.join(work, f"llmctl-grpo-{off_policy}")
    started = time.perf_counter()
    summary = stage.run(StageContext("grpo", "grpo", spec, "bench", "r", "k", out))
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return {
        "steps": len(rows), "steps_per_s": summary["steps_per_s"],
        "samples_per_s": round(summary["steps_per_s"] * batch, 3),
        **first_last([r["reward_mean"] for r in rows], args.window),
        "kl_last": summary["kl_last"], "wall_s": round(wall, 1),
        "phase_s": {k: round(statistics.fmean(r[k] for r in rows), 4) for k in PHASES},
    }  # fmt: skip


# --- TRL ------------------------------------------------------------------------------------------------------


def trl_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """TRL hands conversational completions as message lists; the rule reads the answer's text."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return rewards.target_length(prompts, texts, **REWARD_KWARGS)


class StepTimer:
    """A transformers callback timing each optimizer step (generation included: TRL generates inside the step)."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, *_: Any, **__: Any) -> None:
                timer.began = time.perf_counter()

            def on_step_end(self, *_: Any, **__: Any) -> None:
                timer.seconds.append(time.perf_counter() - timer.began)

        self.began = 0.0
        self.seconds: list[float] = []
        self.callback = Callback()


def trl_prompts(model: str, prompts: str) -> Any:
    """The prompt messages llmctl's stage reads from the same file, as a TRL conversational dataset."""
    from datasets import Dataset

    from jobs.rlhf.prompts import load_prompts
    from jobs.train.chat_data import ChatTemplate
    from jobs.train.sources import tokenizer_info

    info = tokenizer_info(model, "model")
    template = ChatTemplate(info.chat_template, info.bos_token, info.eos_token)
    loaded, _ = load_prompts(prompts, "prompts", info.tokenizer_json, template, None, 96)
    return Dataset.from_list([{"prompt": p.messages} for p in loaded])


def run_trl(args: argparse.Namespace, model: str, prompts: str, work: str) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    batch = args.prompts * args.samples
    config = GRPOConfig(
        output_dir=os.path.join(work, "trl-grpo"), max_steps=args.steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, num_generations=args.samples, steps_per_generation=1,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, beta=KL_COEF, loss_type="grpo",
        scale_rewards="group", learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, use_cpu=True, bf16=False,
        logging_steps=1, save_strategy="no", report_to=[], seed=0, disable_tqdm=True,
    )  # fmt: skip
    timer = StepTimer()
    started = time.perf_counter()
    trainer = GRPOTrainer(
        model=model, reward_funcs=[trl_reward], args=config, train_dataset=trl_prompts(model, prompts),
        processing_class=AutoTokenizer.from_pretrained(model), callbacks=[timer.callback],
    )  # fmt: skip
    trainer.train()
    wall = time.perf_counter() - started
    rows = [r for r in trainer.state.log_history if "reward" in r]
    return {
        "steps": len(timer.seconds), "steps_per_s": round(len(timer.seconds) / sum(timer.seconds), 6),
        "samples_per_s": round(len(timer.seconds) * batch / sum(timer.seconds), 3),
        **first_last([r["reward"] for r in rows], args.window),
        "kl_last": round(statistics.fmean(r.get("kl", 0.0) for r in rows[-args.window :]), 6),
        "wall_s": round(wall, 1),
    }  # fmt: skip


def sides(args: argparse.Namespace, model: str, prompts: str, work: str) -> dict[str, dict[str, Any]]:
    """One round: TRL, llmctl on-policy, llmctl off-policy, back to back."""
    out = {"trl": run_trl(args, model, prompts, work)}
    out["llmctl_on_policy"] = run_llmctl(args, model, prompts, work, off_policy=0)
    out["llmctl"] = run_llmctl(args, model, prompts, work, off_policy=1)
    return out


def combine(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The median round of each side (by steps/s), each side's steps/s per round, and the per-round ratios' median:
    the sides of one round run minutes apart, rounds further apart, so ratios within a round are the fairer ones."""
    result: dict[str, Any] = {}
    for side in rounds[0]:
        runs = sorted((r[side] for r in rounds), key=lambda run: run["steps_per_s"])
        result[side] = {**runs[len(runs) // 2], "steps_per_s_rounds": [r[side]["steps_per_s"] for r in rounds]}
    for key, side in (("ratio", "llmctl"), ("ratio_on_policy", "llmctl_on_policy")):
        ratios = [r[side]["steps_per_s"] / r["trl"]["steps_per_s"] for r in rounds]
        result[f"{key}_rounds"] = [round(x, 3) for x in ratios]
        result[key] = round(statistics.median(ratios), 3)
    mine, theirs = result["llmctl"], result["trl"]
    result["reward_at_least_trl"] = mine["reward_last"] >= theirs["reward_last"]
    # Equal within noise: the gap is under two standard errors of the difference (each side's over its last steps).
    gap_se = ((mine["reward_last_se"] or 0.0) ** 2 + (theirs["reward_last_se"] or 0.0) ** 2) ** 0.5
    result["reward_gap"] = round(mine["reward_last"] - theirs["reward_last"], 4)
    result["reward_equal_or_better"] = result["reward_gap"] >= -2 * gap_se
    return result


def main() -> None:
    args = parse_args()
    started = time.time()
    cluster = Cluster(args.address)
    try:
        with tempfile.TemporaryDirectory(prefix="llmctl-bench-rlhf-") as work:
            model, prompts = chat_model(work)
            result: dict[str, Any] = {
                "steps": args.steps, "prompts_per_step": args.prompts, "samples_per_prompt": args.samples,
                "max_new_tokens": args.max_new_tokens, "reward": "target_length(words=1, per_word=0.1)",
                "device": "cpu", "rounds": args.rounds,
            }  # fmt: skip
            cluster.ensure()
            rounds = []
            for i in range(args.rounds):
                os.makedirs(os.path.join(work, f"round-{i}"))
                rounds.append(sides(args, model, prompts, os.path.join(work, f"round-{i}")))
                print(json.dumps({f"round_{i}": rounds[-1]}), flush=True)  # kept should a later round fail
            result.update(combine(rounds))
            result["bench_wall_s"] = round(time.time() - started, 1)
    finally:
        cluster.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()

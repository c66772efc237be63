"""The RLHF driver: one step reads as the algorithm, each phase a method over the role worker groups.

    generate -> score (reward, reference log-probs, values, old log-probs: in parallel) -> advantages
    -> update (critic and actor: in parallel, they are separate groups) -> sync weights to the rollout engines

With `rollout.off_policy_steps: 1` the engines sample the next step's answers while this step scores and trains
(the way OpenRLHF's async mode and veRL's one-step off-policy trainer overlap them): those answers come from the
weights one update behind. Calls to an engine run in the order they were sent, so the sync queued after an update
lands before the next rollout is sampled and the lag never grows past one step. While the groups train, the driver
also collects those answers and sends them to the roles that do not train (reference log-probs, the reward), so
the next step starts with them scored; the critic's values and the actor's old log-probs wait for the updated
weights.

`GRPOTrainer` and `PPOTrainer` differ only in `advantages` (and PPO's critic). Checkpoints (actor and critic
DeepSpeed state plus the driver's position) go to `<stage>/_state/checkpoints/step_N/`, committed by
`trainer.json` written last; a resubmitted run resumes from the latest committed one. Every step's metrics also go
to TensorBoard event files under `<stage>/_state/tensorboard/` (kept across resubmissions, like the checkpoints).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from cluster.worker_group import ResourcePool, WorkerGroup
from jobs.rlhf import algorithms as alg
from jobs.rlhf.prompts import Prompt, PromptStream
from jobs.rlhf.rewards import FunctionReward
from jobs.rlhf.rollout import assemble
from jobs.train.metrics import TensorBoard
from pipelines import storage

STATE_FILE = "trainer.json"
TENSORBOARD_DIR = "tensorboard"


@dataclass
class Roles:
    actor: WorkerGroup
    reference: WorkerGroup
    engines: WorkerGroup
    reward: WorkerGroup | FunctionReward
    critic: WorkerGroup | None = None
    pool: ResourcePool | None = None  # shared by colocated roles

    def shutdown(self) -> None:
        for group in (self.actor, self.reference, self.engines, self.reward, self.critic):
            if isinstance(group, WorkerGroup):
                group.shutdown()
        if self.pool is not None:
            self.pool.remove()


@dataclass
class Rollout:
    """One step's samples: the tensors the roles train on and the texts the reward reads."""

    prompts: list[Prompt]  # one per sample (a prompt repeated num_samples times, consecutively)
    completions: list[str]
    tensors: dict[str, Any]  # input_ids, attention_mask, mask, then scores, ref_logp, values, advantages ...
    frozen: dict[str, Any] = field(default_factory=dict)  # pending calls of the roles that do not train


@dataclass
class Progress:
    step: int = 0
    prompt_position: int = 0
    loop_time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Sampling:
    """Answers being sampled: the prompts sent and the engines' pending call."""

    prompts: list[Prompt]
    call: Any  # cluster.worker_group.Pending


class RLHFTrainer:
    def __init__(self, spec: Any, roles: Roles, stream: PromptStream, decode: Any, pad_id: int,
                 state_uri: str, log: Any) -> None:  # fmt: skip
        self.spec, self.roles, self.stream, self.decode, self.pad_id = spec, roles, stream, decode, pad_id
        self.state_uri, self.log = state_uri, log
        self.ahead: Sampling | None = None  # the next step's answers, sampled during this step (off-policy mode)
        self.ahead_rollout: Rollout | None = None  # ... once collected (and sent to the frozen roles)
        self.pending_sync: tuple[Any, Any] | None = None  # (state dict, engine load) calls of an unfinished sync
        self.progress = Progress()
        self.resumed_from = 0
        self.started = time.monotonic()
        self.tensorboard = TensorBoard(storage.join(state_uri, TENSORBOARD_DIR), enabled=True)

    # --- the loop ------------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        try:
            self.resume()
            stopped_by = "steps"
            while self.progress.step < self.spec.steps:
                if self.spec.time_budget_s is not None and self.loop_time() >= self.spec.time_budget_s:
                    stopped_by = "time_budget"
                    break
                metrics = self.train_step()
                self.after_step(metrics)
            self.finish_sync()
            if not self.progress.history or self.progress.step % self.spec.checkpoint_every:
                self.checkpoint()
            return self.summary(stopped_by)
        finally:
            self.tensorboard.close()

    def train_step(self) -> dict[str, Any]:
        start = time.perf_counter()
        rollout = self.generate()
        if self.spec.rollout.off_policy_steps and self.progress.step + 1 < self.spec.steps:
            self.ahead = self.sample()  # sampled with the current weights while this step trains
        generated = time.perf_counter()
        self.score(rollout)
        self.advantages(rollout)
        scored = time.perf_counter()
        metrics = self.update(rollout)
        updated = time.perf_counter()
        metrics["sync_s"] = self.sync_weights()
        elapsed = time.perf_counter() - start
        timings = {"generate_s": generated - start, "score_s": scored - generated, "update_s": updated - scored,
                   "step_s": elapsed}  # fmt: skip
        return {**self.rollout_metrics(rollout), **metrics, **timings, "samples_per_s": len(rollout.prompts) / elapsed}

    # --- the phases ----------------------------------------------------------------------------------------

    def sample(self) -> Sampling:
        """Send the next prompts (each num_samples times) to the engines; the answers are collected later."""
        prompts = [p for p in self.stream.take(self.spec.prompts_per_step) for _ in range(self.spec.num_samples)]
        return Sampling(prompts, self.roles.engines.generate.remote({"prompt_ids": [p.ids for p in prompts]}))

    def generate(self) -> Rollout:
        """This step's answers: the ones sampled ahead during the previous step, or sampled now."""
        if self.ahead_rollout is not None:
            rollout, self.ahead_rollout = self.ahead_rollout, None
            return rollout
        sampling, self.ahead = self.ahead or self.sample(), None
        return self.collect(sampling)

    def collect(self, sampling: Sampling) -> Rollout:
        """The sampled answers as a rollout, already sent to the frozen roles for scoring."""
        answers = sampling.call.get()["response_ids"]
        completions = [self.decode(a) for a in answers]
        tensors = assemble([p.ids for p in sampling.prompts], answers, self.pad_id)
        rollout = Rollout(sampling.prompts, completions, tensors)
        self.score_frozen(rollout)
        return rollout

    def score_frozen(self, rollout: Rollout) -> None:
        """Start what the weights being trained do not change: reference log-probs and the reward."""
        import torch

        batch = rollout.tensors
        rollout.frozen["ref_logp"] = self.roles.reference.log_probs.remote(batch)
        if isinstance(self.roles.reward, FunctionReward):
            scores = self.roles.reward.score([p.text for p in rollout.prompts], rollout.completions)
            batch["scores"] = torch.tensor(scores, dtype=torch.float32)
        else:
            texts = {"prompt_messages": [p.messages for p in rollout.prompts], "completions": rollout.completions}
            rollout.frozen["scores"] = self.roles.reward.score.remote(texts)

    def score(self, rollout: Rollout) -> None:
        """Reward, reference log-probs and (PPO) values and old log-probs, each group working at once."""
        batch = rollout.tensors
        pending = dict(rollout.frozen)
        if self.roles.critic is not None:
            pending["values"] = self.roles.critic.values.remote(batch)
        if self.needs_old_logps():
            pending["old_logp"] = self.roles.actor.log_probs.remote(batch)
        for key, call in pending.items():
            batch[key] = call.get()[key]

    def needs_old_logps(self) -> bool:
        """Log-probs of the sampling policy; with one epoch the actor's first pass gives them for free."""
        return self.spec.epochs > 1

    def advantages(self, rollout: Rollout) -> None:
        raise NotImplementedError

    def update(self, rollout: Rollout) -> dict[str, Any]:
        """Critic and actor updates on the same batch, in parallel (separate worker groups)."""
        batch = {k: v for k, v in rollout.tensors.items() if k != "scores"}
        pending = [self.roles.actor.update.remote(batch, epochs=self.spec.epochs)]
        if self.roles.critic is not None:
            pending.append(self.roles.critic.update.remote(batch, epochs=self.spec.epochs))
        if self.ahead is not None:  # off-policy: the next answers and their frozen scores, while the groups train
            self.ahead_rollout, self.ahead = self.collect(self.ahead), None
        metrics: dict[str, Any] = {}
        for call in pending:
            metrics.update(call.get())
        return metrics

    def sync_weights(self) -> float:
        """The actor's new weights into every rollout engine; seconds the driver waited for it. The state dict goes
        from the actor to the engines through the object store, not through the driver. In off-policy mode the
        load is queued behind the rollout being sampled, and only the previous sync is waited for."""
        start = time.perf_counter()
        self.finish_sync()  # off-policy: long done, it ran before the rollout this step trained on
        state = self.roles.actor.state_dict.remote()  # every rank takes part (ZeRO-3 gathers); rank 0 answers
        self.pending_sync = (state, self.roles.engines.load_weights.remote(state.rank_zero_ref()))
        if not self.sampled_ahead:
            self.finish_sync()
        return time.perf_counter() - start

    @property
    def sampled_ahead(self) -> bool:
        """Whether the next step's answers are on their way or here (off-policy mode, all but the last step)."""
        return self.ahead is not None or self.ahead_rollout is not None

    def finish_sync(self) -> None:
        if self.pending_sync is not None:
            state, load = self.pending_sync
            load.get()  # raises rank 0's error too: its state dict is the load's argument
            state.wait_others()
            self.pending_sync = None

    # --- metrics, checkpoints ------------------------------------------------------------------------------

    def rollout_metrics(self, rollout: Rollout) -> dict[str, Any]:
        t = rollout.tensors
        scores = t["scores"]
        lengths = t["mask"].sum(-1)
        kl = (
            alg.masked_mean(alg.kl_estimate(t["old_logp"], t["ref_logp"], "k1"), t["mask"]) if "old_logp" in t else None
        )
        return {
            "reward_mean": float(scores.mean()), "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
            "response_len": float(lengths.float().mean()), **({"rollout_kl": float(kl)} if kl is not None else {}),
        }  # fmt: skip

    def after_step(self, metrics: dict[str, Any]) -> None:
        self.progress.step += 1
        # Prompts sampled ahead are not trained on yet: a run resumed from here samples them again.
        self.progress.prompt_position = self.stream.position - (self.spec.prompts_per_step if self.sampled_ahead else 0)
        metrics = {"step": self.progress.step, **{k: round(float(v), 6) for k, v in metrics.items()}}
        self.progress.history.append(metrics)
        self.tensorboard.log(self.progress.step, metrics)
        if self.progress.step % self.spec.log_every == 0:
            shown = ("reward_mean", "reward_std", "kl", "rollout_kl", "entropy", "clipfrac", "value_loss",
                     "explained_var", "response_len", "samples_per_s", "sync_s")  # fmt: skip
            fields = " ".join(f"{k}={metrics[k]:.4g}" for k in shown if k in metrics)
            self.log(f"progress step={self.progress.step} {fields}")
        if self.progress.step % self.spec.checkpoint_every == 0:
            self.checkpoint()

    def checkpoint(self) -> None:
        uri = storage.join(self.state_uri, "checkpoints", f"step_{self.progress.step:08d}")
        pending = [self.roles.actor.save.remote(storage.join(uri, "actor"))]
        if self.roles.critic is not None:
            pending.append(self.roles.critic.save.remote(storage.join(uri, "critic")))
        for call in pending:
            call.get()
        self.progress.loop_time_s = self.loop_time()
        self.tensorboard.sync()
        storage.write_json(storage.join(uri, STATE_FILE), self.progress.__dict__)
        for old in self.checkpoints()[: -self.spec.keep_checkpoints]:
            storage.delete_dir(old)

    def checkpoints(self) -> list[str]:
        """Committed checkpoint directories, oldest first."""
        files = storage.list_files(storage.join(self.state_uri, "checkpoints"), suffix=STATE_FILE)
        return sorted(f[: -len(STATE_FILE) - 1] for f in files)

    def resume(self) -> None:
        found = self.checkpoints()
        if not found:
            return
        uri = found[-1]
        state = storage.read_json(storage.join(uri, STATE_FILE))
        pending = [self.roles.actor.load.remote(storage.join(uri, "actor"))]
        if self.roles.critic is not None:
            pending.append(self.roles.critic.load.remote(storage.join(uri, "critic")))
        for call in pending:
            call.get()
        self.progress = Progress(**state)
        self.stream.position = self.progress.prompt_position
        self.resumed_from = self.progress.step
        self.sync_weights()  # the engines started from the initial policy
        self.log(f"resumed from step {self.resumed_from} ({uri})")

    def loop_time(self) -> float:
        return self.progress.loop_time_s + (time.monotonic() - self.started)

    def summary(self, stopped_by: str) -> dict[str, Any]:
        history = self.progress.history
        window = max(1, min(5, len(history) // 4 or 1))

        def mean(key: str, rows: list[dict[str, Any]]) -> float | None:
            values = [r[key] for r in rows if key in r]
            return round(statistics.fmean(values), 6) if values else None

        run = history[self.resumed_from :] if self.resumed_from < len(history) else history
        first, last = history[:window], history[-window:]
        step_time = sum(r["step_s"] for r in run)
        return {
            "step": self.progress.step,
            "resumed_from_step": self.resumed_from,
            "steps_run": self.progress.step - self.resumed_from,
            "stopped_by": stopped_by,
            "reward_first": mean("reward_mean", first),
            "reward_last": mean("reward_mean", last),
            "kl_last": mean("kl", last) if mean("kl", last) is not None else mean("rollout_kl", last),
            "response_len_last": mean("response_len", last),
            "samples_per_s": mean("samples_per_s", run),
            "steps_per_s": round(len(run) / step_time, 6) if step_time else None,
            "sync_s": mean("sync_s", run),
            "loop_time_s": round(self.loop_time(), 3),
        }

    def history_jsonl(self) -> str:
        return "".join(json.dumps(row) + "\n" for row in self.progress.history)


class GRPOTrainer(RLHFTrainer):
    def advantages(self, rollout: Rollout) -> None:
        t = rollout.tensors
        t["advantages"] = alg.group_advantages(t["scores"], self.spec.num_samples, scale=self.spec.scale_rewards)


class PPOTrainer(RLHFTrainer):
    def needs_old_logps(self) -> bool:
        return True  # the KL-shaped reward needs the sampling policy's log-probs

    def advantages(self, rollout: Rollout) -> None:
        t, spec = rollout.tensors, self.spec
        kl = alg.kl_estimate(t["old_logp"], t["ref_logp"], spec.kl.estimator)
        rewards = alg.shaped_rewards(t["scores"], kl, t["mask"], spec.kl.coef)
        advantages, returns = alg.gae(rewards, t["values"], t["mask"], spec.gamma, spec.lam)
        t["advantages"] = alg.whiten(advantages, t["mask"]) if spec.whiten_advantages else advantages
        t["returns"] = returns

    def rollout_metrics(self, rollout: Rollout) -> dict[str, Any]:
        """Adds the critic's health before its update: how well its values predicted this batch's returns."""
        t = rollout.tensors
        critic = {
            "explained_var": float(alg.explained_variance(t["values"], t["returns"], t["mask"])),
            "value_mean": float(alg.masked_mean(t["values"], t["mask"])),
        }
        return {**super().rollout_metrics(rollout), **critic}


TRAINERS = {"grpo": GRPOTrainer, "ppo": PPOTrainer}

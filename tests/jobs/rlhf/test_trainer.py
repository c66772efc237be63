"""The RLHF driver's order of calls, on stand-in role groups (the stage tests run the real ones): what overlaps
with what is the point of separate worker groups, and a wrong order is invisible in the rewards."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from jobs.rlhf.prompts import Prompt, PromptStream
from jobs.rlhf.rewards import FunctionReward
from jobs.rlhf.trainer import GRPOTrainer, Roles


class Call:
    """A pending call of a stand-in group: `get` is logged, so a test sees when the driver waited for it."""

    def __init__(self, log: list[str], name: str, value: Any) -> None:
        self.log, self.name, self.value = log, name, value

    def get(self) -> Any:
        self.log.append(f"wait {self.name}")
        return self.value

    def rank_zero_ref(self) -> Any:
        return self.value

    def wait_others(self) -> None:
        pass


class Group:
    """Stands in for a WorkerGroup: `group.method.remote(...)` logs the send and answers with `answers[method]`."""

    def __init__(self, log: list[str], role: str, **answers: Any) -> None:
        for method, answer in answers.items():
            setattr(self, method, SimpleNamespace(remote=self.sender(log, f"{role}.{method}", answer)))

    @staticmethod
    def sender(log: list[str], name: str, answer: Any) -> Any:
        def remote(*args: Any, **kwargs: Any) -> Call:
            log.append(f"send {name}")
            return Call(log, name, answer(*args, **kwargs))

        return remote


def trainer(tmp_path, off_policy: int) -> tuple[GRPOTrainer, list[str]]:
    log: list[str] = []
    roles = Roles(
        actor=Group(log, "actor", update=lambda batch, epochs: {"loss": 0.0}, state_dict=lambda: {}),
        reference=Group(log, "reference", log_probs=lambda batch: {"ref_logp": torch.zeros(batch["mask"].shape)}),
        engines=Group(log, "engines", generate=lambda req: {"response_ids": [[7, 8]] * len(req["prompt_ids"])},
                      load_weights=lambda state: None),  # fmt: skip
        reward=FunctionReward("jobs.rlhf.rewards:target_length", {}, "reward_function"),
    )
    spec = SimpleNamespace(steps=3, prompts_per_step=2, num_samples=2, epochs=1, scale_rewards=True,
                           rollout=SimpleNamespace(off_policy_steps=off_policy))  # fmt: skip
    stream = PromptStream([Prompt([{"role": "user", "content": f"q{i}"}], f"q{i}", [1, 2, i]) for i in range(4)], 0)
    grpo = GRPOTrainer(spec, roles, stream, decode=lambda ids: "a b", pad_id=0, state_uri=str(tmp_path), log=print)
    return grpo, log


def test_off_policy_scores_the_next_answers_while_the_actor_trains(tmp_path):
    grpo, log = trainer(tmp_path, off_policy=1)
    grpo.train_step()
    update_sent, update_done = log.index("send actor.update"), log.index("wait actor.update")
    # Step 1 samples step 2's answers at its start; while the actor trains on step 1, the driver collects them and
    # sends them to the reference, so step 2 starts with its reference log-probs on the way or done.
    assert log.count("send engines.generate") == 2 and log.count("send reference.log_probs") == 2
    assert update_sent < log.index("send reference.log_probs", update_sent) < update_done
    assert log.index("send engines.load_weights") > update_done  # new weights only after the update
    log.clear()
    grpo.train_step()
    # Step 2 sends step 3's prompts, then only waits for reference log-probs that were sent during step 1.
    assert log[:2] == ["send engines.generate", "wait reference.log_probs"], log
    assert grpo.sampled_ahead  # step 3's answers are on their way


def test_on_policy_samples_scores_and_trains_in_turn(tmp_path):
    grpo, log = trainer(tmp_path, off_policy=0)
    grpo.train_step()
    assert log == [
        "send engines.generate", "wait engines.generate", "send reference.log_probs", "wait reference.log_probs",
        "send actor.update", "wait actor.update", "send actor.state_dict", "send engines.load_weights",
        "wait engines.load_weights",
    ]  # fmt: skip
    assert not grpo.sampled_ahead

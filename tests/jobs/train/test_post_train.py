"""sft, reward_model and dpo end to end on the session Ray cluster: data accounting in the marker, learning,
exports that transformers loads as they are, and DPO resuming from its checkpoint. Each run starts from a random
tiny Llama (the `base_model_dir` fixture) so no pretraining run is spent; together they are 4 Ray Train runs."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from jobs.demo.chat import PLANTED_PAIRS, PLANTED_SFT, preference_pairs
from jobs.train import chat_datasets, dpo, reward, sft
from jobs.train.chat_data import Encoder, Pair
from pipelines.spec.post import DPOStage, RewardModelStage, SFTStage
from tests.jobs.train.conftest import post_context
from tests.jobs.train.test_post_data import settings_for

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

SCHEDULE = {"seq_len": 128, "micro_batch_size": 8, "eval_batches": 50, "log_every": 5}


def drop_state_siblings(out: str) -> None:
    """What the driver does before re-running an unfinished stage: empty its output, all but _state/."""
    for name in os.listdir(out):
        if name != "_state":
            shutil.rmtree(os.path.join(out, name))


def held_out_pairs(model_dir: str, n: int = 64) -> dict[str, np.ndarray]:
    """Preference rows from a seed the stages never saw, encoded like the stages encode them."""
    encoder = Encoder(settings_for(model_dir))
    rows: dict[str, list] = {k: [] for k in ("prompt_len", "chosen_ids", "rejected_ids", "chosen_len", "rejected_len")}
    for prompt, chosen, rejected in preference_pairs(n, seed=99):
        prompt_len, c, r, _ = encoder.pair(Pair([{"role": "user", "content": prompt}], chosen, rejected))
        for key, value in (("prompt_len", prompt_len), ("chosen_ids", c), ("rejected_ids", r),
                           ("chosen_len", len(c)), ("rejected_len", len(r))):  # fmt: skip
            rows[key].append(value)
    out = {k: np.array(v, dtype=np.int32) for k, v in rows.items() if not k.endswith("_ids")}
    for key in ("chosen_ids", "rejected_ids"):
        out[key] = chat_datasets.pad_rows(rows[key], 128, encoder.settings.pad_id)
    return out


def policy_preference(model_dir: str, rows: dict[str, np.ndarray]) -> float:
    """How often a causal LM gives the chosen answer a higher log-probability than the rejected one."""
    import torch
    from transformers import AutoModelForCausalLM

    from jobs.train.losses import sequence_logps
    from jobs.train.objectives import pair_inputs

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids, mask, pairs = pair_inputs({k: torch.as_tensor(v) for k, v in rows.items()})
    with torch.no_grad():
        logps = sequence_logps(model(input_ids=ids).logits, ids, mask, average=False)
    return float((logps[:pairs] > logps[pairs:]).float().mean())


def test_sft_with_lora_and_packing_merges_adapters_into_the_export(ray_session, chat_dir, base_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = SFTStage(
        kind="sft", model=base_model_dir, data=f"{chat_dir}/sft.jsonl", packing=True, val_fraction=0.1,
        lora={"rank": 8, "alpha": 16}, optim={"lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 2},
        schedule={**SCHEDULE, "steps": 12, "eval_every": 12, "checkpoint_every": 12},
    )  # fmt: skip
    out = str(tmp_path / "sft")
    metrics = sft.run(post_context("sft", spec, out))

    json.dumps(metrics)  # it becomes the _SUCCESS marker
    assert metrics["dropped"] == PLANTED_SFT
    assert metrics["rows"]["in"] == 400 + sum(PLANTED_SFT.values())
    assert metrics["rows"]["train"] + metrics["rows"]["val"] == 400
    assert (metrics["step"], metrics["world_size"]) == (12, 1)
    assert 0 < metrics["trainable_params"] < metrics["params"] / 5  # only the adapters train

    model_dir = os.path.join(out, "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert not [n for n, _ in model.named_parameters() if "lora" in n]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.generation_config.eos_token_id  # chat turns end generation when served

    # The merged export scores the validation conversations as the trained (adapter) model did, and better than
    # the base model: the adapters are in the weights.
    settings = settings_for(model_dir)
    lines = np.array(open(f"{chat_dir}/sft.jsonl").read().splitlines(), dtype=object)
    encoded = chat_datasets.encode_conversations({"record": lines}, settings)
    rows = chat_datasets.keep_split(chat_datasets.usable(encoded), "val")

    def val_loss(directory: str) -> float:
        lm = AutoModelForCausalLM.from_pretrained(directory).eval()
        ids, labels = torch.as_tensor(rows["input_ids"]).long(), torch.as_tensor(rows["labels"]).long()
        with torch.no_grad():
            logits = lm(input_ids=ids).logits[:, :-1]
        return float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=-100))

    exported = val_loss(model_dir)
    assert exported == pytest.approx(metrics["eval_loss"], rel=0.02)
    assert exported < val_loss(base_model_dir) - 0.25


def test_reward_model_ranks_held_out_pairs_and_exports_a_classifier(ray_session, chat_dir, base_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    spec = RewardModelStage(
        kind="reward_model", model=base_model_dir, data=f"{chat_dir}/preference.jsonl", val_fraction=0.1,
        optim={"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
        schedule={**SCHEDULE, "steps": 24, "micro_batch_size": 16, "eval_every": 24, "checkpoint_every": 24},
    )  # fmt: skip
    out = str(tmp_path / "reward")
    metrics = reward.run(post_context("reward_model", spec, out))

    assert metrics["dropped"] == PLANTED_PAIRS
    assert metrics["eval_accuracy"] > 0.9 and metrics["eval_margin"] > 0

    model = AutoModelForSequenceClassification.from_pretrained(os.path.join(out, "model")).eval()
    assert model.config.architectures == ["LlamaForSequenceClassification"]
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    rows = held_out_pairs(os.path.join(out, "model"))
    with torch.no_grad():
        chosen = model(input_ids=torch.as_tensor(rows["chosen_ids"]).long()).logits.squeeze(-1)
        rejected = model(input_ids=torch.as_tensor(rows["rejected_ids"]).long()).logits.squeeze(-1)
    accuracy = float((chosen > rejected).float().mean())
    print(f"reward model: eval_accuracy {metrics['eval_accuracy']:.3f}, held-out accuracy {accuracy:.3f}")
    assert accuracy > 0.9


def test_dpo_raises_held_out_preference_and_resumes(ray_session, chat_dir, base_model_dir, tmp_path):
    def spec(steps: int, reference: str) -> DPOStage:
        return DPOStage(
            kind="dpo", model=base_model_dir, data=f"{chat_dir}/preference.jsonl", val_fraction=0.1, beta=0.1,
            reference_logprobs=reference, optim={"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
            schedule={**SCHEDULE, "steps": steps, "eval_every": 6, "checkpoint_every": 6}, scaling={"num_workers": 2},
        )  # fmt: skip

    out = str(tmp_path / "dpo")
    first = dpo.run(post_context("dpo", spec(6, "precompute"), out))
    assert (first["step"], first["resumed_from_step"], first["zero_stage"]) == (6, 0, 2)

    # Resubmitted with more steps (and the reference now scored on the fly: same log-probs, other code path).
    drop_state_siblings(out)
    second = dpo.run(post_context("dpo", spec(12, "on_the_fly"), out))
    assert (second["step"], second["resumed_from_step"], second["steps_run"]) == (12, 6, 6)
    assert second["dropped"] == PLANTED_PAIRS

    # Rewards start at 0 (policy == reference), so accuracy starts at 0: held-out pairs are now ranked right.
    assert second["eval_reward_accuracy"] > 0.8 and second["eval_reward_margin"] > 0
    assert second["eval_reward_chosen"] > second["eval_reward_rejected"]
    rows = held_out_pairs(base_model_dir)
    before = policy_preference(base_model_dir, rows)
    after = policy_preference(os.path.join(out, "model"), rows)
    print(f"dpo: eval_reward_accuracy {second['eval_reward_accuracy']:.3f}, preference {before:.3f} -> {after:.3f}")
    assert after > before and after > 0.8

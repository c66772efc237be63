"""Role workers called in-process (their methods are plain methods; WorkerGroup only adds dispatch): the reward
model scores each prompt + answer the same alone or padded in a batch, at the answer's last token."""

from __future__ import annotations

import pytest
import torch

from jobs.rlhf.workers import RewardModelWorker, RoleSetup

pytestmark = [pytest.mark.slow]

PROMPTS = [[{"role": "user", "content": "Where is the harbour?"}], [{"role": "user", "content": "Name a colour."}]]
ANSWERS = ["Past the old mill, by the river.", "Red."]


@pytest.fixture(scope="module")
def reward_model_dir(base_model_dir, tmp_path_factory) -> str:
    """The tiny chat Llama with a random scalar head, as a reward_model stage exports it."""
    from transformers import AutoModelForSequenceClassification

    from jobs.train.export import copy_tokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base_model_dir, num_labels=1)
    out = str(tmp_path_factory.mktemp("reward-model"))
    model.save_pretrained(out)
    copy_tokenizer(base_model_dir, out)
    return out


def scorer(model_dir: str, micro_batch_size: int) -> RewardModelWorker:
    worker = RewardModelWorker(0, 1, setup=RoleSetup(model_dir, micro_batch_size))
    worker.setup()
    return worker


def test_reward_model_scores_do_not_depend_on_padding(reward_model_dir):
    batched = scorer(reward_model_dir, micro_batch_size=2).score({"prompt_messages": PROMPTS, "completions": ANSWERS})
    alone = scorer(reward_model_dir, micro_batch_size=1)
    single = [
        alone.score({"prompt_messages": [p], "completions": [a]})["scores"].item()
        for p, a in zip(PROMPTS, ANSWERS, strict=True)
    ]
    assert batched["scores"].shape == (2,)
    assert batched["scores"].tolist() == pytest.approx(single, abs=1e-5)
    assert single[0] != pytest.approx(single[1])  # the answers are told apart


def test_reward_model_reads_the_last_token_of_the_rendered_answer(reward_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    worker = scorer(reward_model_dir, micro_batch_size=2)
    got = worker.score({"prompt_messages": PROMPTS[:1], "completions": ANSWERS[:1]})["scores"].item()
    tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
    text = tokenizer.apply_chat_template([*PROMPTS[0], {"role": "assistant", "content": ANSWERS[0]}], tokenize=False)
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir, num_labels=1).eval()
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[:, -1]
        expected = model.score(hidden)[0, 0].item()
    assert got == pytest.approx(expected, abs=1e-5)

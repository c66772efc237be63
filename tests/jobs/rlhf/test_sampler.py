"""The `generate` backend's decode loop against transformers' `generate`, and its top-k / top-p filter."""

from __future__ import annotations

import math

import pytest

from jobs.rlhf.rollout import cut_at_stop
from jobs.rlhf.sampler import filter_logits, sample
from tests.services.tiny_model import build_tiny_llama

NEW_TOKENS = 12


@pytest.fixture(scope="module")
def model_and_prompts(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = build_tiny_llama(str(tmp_path_factory.mktemp("sampler-model")))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    # Different lengths, so rows are left-padded by different amounts.
    prompts = [torch.randint(5, 300, (n,), generator=g).tolist() for n in (3, 9, 17, 6)]
    return model, prompts


def hf_generate(model, prompts, pad, stops, **sampling):
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, pad_token_id=pad,
                             eos_token_id=list(stops) or None, **sampling)  # fmt: skip
    return [cut_at_stop(row, set(stops), pad) for row in out[:, width:].tolist()]


def test_greedy_answers_equal_transformers_generate_on_left_padded_rows(model_and_prompts):
    model, prompts = model_and_prompts
    ours = sample(model, prompts, max_new_tokens=NEW_TOKENS, pad_id=0, greedy=True)
    assert ours == hf_generate(model, prompts, 0, (), do_sample=False)
    assert all(len(row) == NEW_TOKENS for row in ours)
    # With the third row's 4th greedy token as a stop token: that row ends there (pad after it), others go on.
    stop = ours[2][3]
    stopped = sample(model, prompts, max_new_tokens=NEW_TOKENS, pad_id=0, stop_ids=(stop,), greedy=True)
    assert [cut_at_stop(r, {stop}, 0) for r in stopped] == hf_generate(model, prompts, 0, (stop,), do_sample=False)
    assert stopped[2][:4] == ours[2][:4] and stopped[2][4:] == [0] * (NEW_TOKENS - 4)


def test_sampling_follows_the_seed_and_top_k_one_is_greedy(model_and_prompts):
    import torch

    model, prompts = model_and_prompts
    common = {"max_new_tokens": NEW_TOKENS, "pad_id": 0}
    torch.manual_seed(1)
    first = sample(model, prompts, **common)
    torch.manual_seed(1)
    assert sample(model, prompts, **common) == first
    assert sample(model, prompts, **common) != first  # a different draw
    assert sample(model, prompts, top_k=1, **common) == sample(model, prompts, greedy=True, **common)


def test_filter_keeps_the_top_k_and_the_smallest_nucleus():
    import torch

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda out: [i for i, v in enumerate(out[0].tolist()) if not math.isinf(v)]  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [0, 1]
    assert kept(filter_logits(logits, top_p=0.5)) == [0]  # 0.5 alone reaches 0.5
    assert kept(filter_logits(logits, top_p=0.7)) == [0, 1]
    assert kept(filter_logits(logits, top_p=0.9)) == [0, 1, 2]
    assert kept(filter_logits(logits, top_p=1.0)) == [0, 1, 2, 3]
    shuffled = logits[:, [2, 0, 3, 1]]  # the filter works on the values, wherever they are
    assert kept(filter_logits(shuffled, top_p=0.7)) == [1, 3]
    assert torch.equal(filter_logits(logits, top_p=0.7)[0, :2], logits[0, :2])  # kept logits are unchanged

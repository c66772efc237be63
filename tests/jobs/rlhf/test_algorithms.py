"""The RLHF maths against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from cluster.worker_group import concat, split
from jobs.rlhf import algorithms as alg
from jobs.rlhf.rollout import assemble, cut_at_stop

LOG = math.log


def test_kl_estimators():
    logp, ref = torch.tensor([LOG(0.5)]), torch.tensor([LOG(0.25)])
    assert alg.kl_estimate(logp, ref, "k1").item() == pytest.approx(LOG(2))  # log(0.5 / 0.25)
    # k3 = r - log r - 1 with r = ref / pi = 0.5: 0.5 + log 2 - 1
    assert alg.kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 + LOG(2) - 1)
    assert alg.kl_estimate(ref, ref, "k3").item() == 0.0  # no divergence, and never negative
    with pytest.raises(ValueError, match="unknown KL estimator 'k2'; use k1 or k3"):
        alg.kl_estimate(logp, ref, "k2")


def test_gae_stops_at_the_end_of_the_answer():
    # Position 0 is prompt (masked), the answer is positions 1-3, reward 1 at the last token; gamma 0.9, lam 0.8.
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[5.0, 0.5, 0.6, 0.7]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    adv, ret = alg.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=3: delta = 1 - 0.7 = 0.3 (nothing after the answer)                         A3 = 0.3
    # t=2: delta = 0.9 * 0.7 - 0.6 = 0.03;  A2 = 0.03 + 0.72 * 0.3 = 0.246
    # t=1: delta = 0.9 * 0.6 - 0.5 = 0.04;  A1 = 0.04 + 0.72 * 0.246 = 0.21712
    assert adv.tolist()[0] == pytest.approx([0.0, 0.21712, 0.246, 0.3])
    assert ret.tolist()[0] == pytest.approx([0.0, 0.71712, 0.846, 1.0])  # A + V


def test_gamma_one_lambda_one_is_the_monte_carlo_return():
    rewards = torch.tensor([[0.0, -0.1, -0.1, 2.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    adv, ret = alg.gae(rewards, torch.zeros(1, 5), mask, gamma=1.0, lam=1.0)
    assert ret.tolist()[0] == pytest.approx([0.0, 1.8, 1.9, 2.0, 0.0])


def test_shaped_rewards_put_the_score_on_the_last_answer_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    rewards = alg.shaped_rewards(torch.tensor([2.0]), kl, mask, kl_coef=0.5)
    assert rewards.tolist()[0] == pytest.approx([0.0, -0.1, -0.15 + 2.0, 0.0])


def test_whiten_over_the_mask():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert alg.whiten(x, mask).tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)  # mean 2, var 1


def test_group_advantages():
    scores = torch.tensor([1.0, 0.0, 2.0, 3.0, 3.0, 3.0])
    # group 1: mean 1, unbiased std 1; group 2: all equal, so no signal
    assert alg.group_advantages(scores, 3).tolist() == pytest.approx([0.0, -1.0, 1.0, 0.0, 0.0, 0.0], abs=1e-5)
    assert alg.group_advantages(scores * 2, 3, scale=False).tolist() == pytest.approx([0, -2, 2, 0, 0, 0])


def test_ppo_actor_loss_clips_the_ratio():
    old = torch.zeros(1, 3)
    logp = torch.tensor([[LOG(1.5), LOG(0.5), LOG(0.5)]])
    adv = torch.tensor([[2.0, 2.0, -1.0]])
    loss, clipfrac, _ = alg.ppo_actor_loss(logp, old, adv, torch.ones(1, 3), clip=0.2)
    # token 1: max(-2 * 1.5, -2 * 1.2) = -2.4 (clipped); token 2: max(-1, -1.6) = -1; token 3: max(0.5, 0.8) = 0.8
    assert loss.item() == pytest.approx((-2.4 - 1.0 + 0.8) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)


def test_grpo_loss_averages_per_answer_then_over_answers():
    logp = torch.full((2, 2), LOG(0.5))
    ref = torch.full((2, 2), LOG(0.25))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the second answer has one token
    loss, metrics = alg.grpo_loss(logp, logp.detach(), ref, torch.tensor([1.0, -1.0]), mask, clip=0.2, kl_coef=0.1)
    k3 = 0.5 + LOG(2) - 1
    # ratio 1: per token -A + 0.1 k3; answers: -1 + 0.1 k3 and 1 + 0.1 k3 (a token mean would weigh the first twice)
    assert loss.item() == pytest.approx(((-1 + 0.1 * k3) + (1 + 0.1 * k3)) / 2)
    assert metrics["kl"].item() == pytest.approx(k3) and metrics["clipfrac"].item() == 0.0


def test_value_loss_is_clipped_around_the_old_values():
    values, old = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.5]])
    returns = torch.tensor([[1.5, 0.0]])
    loss, clipfrac = alg.value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # clipped values 0.7, 0.7: token 1 max(0.25, 0.64) = 0.64 (clipped); token 2 max(4, 0.49) = 4
    assert loss.item() == pytest.approx(0.5 * (0.64 + 4.0) / 2)
    assert clipfrac.item() == 0.5


def test_token_logps_and_entropy():
    logits = torch.tensor([[[0.0, LOG(3.0)], [0.0, 0.0]]])  # position 0 predicts token 1 with p = 3/4
    ids = torch.tensor([[0, 1]])
    assert alg.token_logps(logits, ids).item() == pytest.approx(LOG(0.75))
    assert alg.entropy(logits).item() == pytest.approx(-(0.25 * LOG(0.25) + 0.75 * LOG(0.75)))


def test_assemble_marks_answer_tokens_at_action_positions():
    batch = assemble([[5, 6, 7], [5]], [[8, 9], [8, 9, 10]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 8, 9, 10, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]  # column t is token t + 1


def test_cut_at_stop():
    assert cut_at_stop([4, 5, 2, 7, 2], {2}, pad=0) == [4, 5, 2]
    assert cut_at_stop([4, 5, 0, 0], {2}, pad=0) == [4, 5]


def test_split_and_concat_round_trip():
    batch = {"x": torch.arange(10).view(5, 2), "t": ["a", "b", "c", "d", "e"]}
    parts = split(batch, 2)
    assert [p["t"] for p in parts] == [["a", "b"], ["c", "d", "e"]]
    back = concat(parts)
    assert torch.equal(back["x"], batch["x"]) and back["t"] == batch["t"]
    ragged = concat([{"v": torch.ones(1, 2)}, {"v": torch.ones(1, 3)}])["v"]  # right-padded to the widest
    assert ragged.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_explained_variance():
    returns = torch.tensor([[9.0, 1.0, 2.0, 3.0]])  # position 0 is prompt: masked out
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    assert alg.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)  # a perfect critic
    assert alg.explained_variance(torch.full_like(returns, 5.0), returns, mask).item() == pytest.approx(0.0)
    # returns 1, 2, 3 have variance 2/3; values 2, 2, 3 leave errors -1, 0, 0 (mean -1/3, variance 2/9):
    # 1 - (2/9) / (2/3) = 2/3
    values = torch.tensor([[0.0, 2.0, 2.0, 3.0]])
    assert alg.explained_variance(values, returns, mask).item() == pytest.approx(2 / 3)

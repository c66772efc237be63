"""Post-training losses and objectives: hand-computed values, TRL's published formula, and the objectives on a tiny
in-memory model (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jobs.train.chat_data import IGNORE
from jobs.train.losses import bradley_terry_loss, dpo_loss, sequence_logps
from jobs.train.model import ModelSource
from jobs.train.objectives import DPO, AssistantLM, PairwiseReward, pair_inputs
from jobs.train.reference import ReferenceScorer


def trl_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type, label_smoothing):
    """The reference: TRL's `DPOTrainer.dpo_loss` (trl/trainer/dpo_trainer.py, v0.8-v0.11), as published, for the
    two loss types llmctl implements. TRL is not a dependency; this is its formula written out."""
    pi_logratios = chosen - rejected
    ref_logratios = ref_chosen - ref_rejected
    logits = pi_logratios - ref_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    elif loss_type == "ipo":
        # eqn (17) of the IPO paper, where beta is the regularization parameter tau
        losses = (logits - 1 / (2 * beta)) ** 2
    chosen_rewards = beta * (chosen - ref_chosen).detach()
    rejected_rewards = beta * (rejected - ref_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


def logps(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_sigmoid_by_hand():
    # margin of log-ratios: (-5 - -7) - (-6 - -6) = 2; beta 0.5 -> beta·margin = 1
    losses, chosen, rejected = dpo_loss(logps(-5.0), logps(-7.0), logps(-6.0), logps(-6.0), beta=0.5)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-9)  # -log sigmoid(1) = 0.3133
    assert (chosen.item(), rejected.item()) == (pytest.approx(0.5), pytest.approx(-0.5))
    smoothed, _, _ = dpo_loss(logps(-5.0), logps(-7.0), logps(-6.0), logps(-6.0), beta=0.5, label_smoothing=0.1)
    expected = 0.9 * math.log(1 + math.exp(-1)) + 0.1 * math.log(1 + math.exp(1))  # 0.4133
    assert smoothed.item() == pytest.approx(expected, abs=1e-9)
    at_start, zero_c, zero_r = dpo_loss(logps(-5.0), logps(-7.0), logps(-5.0), logps(-7.0), beta=0.1)
    assert at_start.item() == pytest.approx(math.log(2)) and zero_c.item() == zero_r.item() == 0.0


def test_ipo_by_hand():
    # margin 2, beta 0.5: (2 - 1/(2·0.5))² = 1; margin 1 hits the target 1/(2 beta) exactly: loss 0
    losses, _, _ = dpo_loss(logps(-5.0, -6.0), logps(-7.0, -7.0), logps(-6.0, -6.0), logps(-6.0, -6.0),
                            beta=0.5, kind="ipo")  # fmt: skip
    assert losses.tolist() == pytest.approx([1.0, 0.0], abs=1e-12)


@pytest.mark.parametrize(("kind", "smoothing"), [("sigmoid", 0.0), ("sigmoid", 0.1), ("sigmoid", 0.3), ("ipo", 0.0)])
@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
def test_dpo_matches_trl_formula(kind, smoothing, beta):
    gen = torch.Generator().manual_seed(7)
    values = [-20 * torch.rand(64, generator=gen) for _ in range(4)]
    ours = dpo_loss(*values, beta=beta, kind=kind, label_smoothing=smoothing)
    theirs = trl_dpo_loss(*values, beta, kind, smoothing)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_unknown_dpo_loss_is_refused():
    with pytest.raises(ValueError, match="unknown DPO loss 'hinge'"):
        dpo_loss(logps(0.0), logps(0.0), logps(0.0), logps(0.0), beta=0.1, kind="hinge")


def test_bradley_terry_by_hand():
    assert bradley_terry_loss(logps(1.0), logps(0.0)).item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert bradley_terry_loss(logps(0.0, 2.0), logps(0.0, 0.0)).item() == pytest.approx(
        (math.log(2) + math.log(1 + math.exp(-2))) / 2
    )


def test_sequence_logps_scores_masked_tokens_shifted_by_one():
    vocab = 4
    logits = torch.zeros(1, 4, vocab)  # uniform: every token has log-prob -log 4
    logits[0, 1, 2] = 100.0  # position 1 is sure the next token is 2
    ids = torch.tensor([[3, 1, 2, 0]])
    mask = torch.tensor([[False, False, True, True]])  # score tokens 2 and 3
    total = sequence_logps(logits, ids, mask, average=False)
    assert total.item() == pytest.approx(0.0 - math.log(vocab), abs=1e-4)
    assert sequence_logps(logits, ids, mask, average=True).item() == pytest.approx(-math.log(vocab) / 2, abs=1e-4)


# --- objectives on a tiny model ----------------------------------------------------------------------------


def tiny_source(tmp_path, head="causal_lm") -> ModelSource:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    dims = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = LlamaConfig(vocab_size=32, num_key_value_heads=2, pad_token_id=0, max_position_embeddings=16, **dims)
    LlamaForCausalLM(config).save_pretrained(str(tmp_path))
    return ModelSource(pretrained_uri=str(tmp_path), head=head, pad_token_id=0)


def pair_batch() -> dict[str, torch.Tensor]:
    """Two pairs, prompt [5, 6] then answers of different lengths, right-padded with 0 to 8."""
    chosen = [[5, 6, 7, 8, 9, 0, 0, 0], [5, 6, 11, 0, 0, 0, 0, 0]]
    rejected = [[5, 6, 12, 13, 0, 0, 0, 0], [5, 6, 14, 15, 16, 17, 0, 0]]
    return {
        "prompt_len": torch.tensor([2, 2], dtype=torch.int32),
        "chosen_ids": torch.tensor(chosen, dtype=torch.int32),
        "rejected_ids": torch.tensor(rejected, dtype=torch.int32),
        "chosen_len": torch.tensor([5, 3], dtype=torch.int32),
        "rejected_len": torch.tensor([4, 6], dtype=torch.int32),
    }


def test_pair_inputs_mask_the_answers_only():
    ids, mask, pairs = pair_inputs(pair_batch())
    assert pairs == 2 and ids.shape == (4, 6)  # cut to the longest row
    assert mask.int().tolist() == [[0, 0, 1, 1, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]


def test_assistant_lm_loss_is_cross_entropy_on_labelled_tokens(tmp_path):
    model = tiny_source(tmp_path).build(seed=0)
    ids = torch.tensor([[1, 2, 3, 4, 5, 0]], dtype=torch.int32)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE, IGNORE]], dtype=torch.int32)
    batch = {"input_ids": ids, "labels": labels, "length": torch.tensor([5], dtype=torch.int32)}
    loss, metrics = AssistantLM().loss(model, batch)
    logits = model(input_ids=ids[:, :5].long()).logits[0]
    expected = F.cross_entropy(logits[[1, 2]], torch.tensor([3, 4]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics == {"tokens": 5, "loss_tokens": 2}


def test_reward_objective_reads_the_last_real_token(tmp_path):
    model = tiny_source(tmp_path, head="reward").build(seed=0)
    batch = pair_batch()
    loss, metrics = PairwiseReward().loss(model, batch)
    with torch.no_grad():  # each sequence alone, unpadded
        scores = [model(input_ids=batch[f"{side}_ids"][i : i + 1, : batch[f"{side}_len"][i]].long()).logits.item()
                  for side in ("chosen", "rejected") for i in range(2)]  # fmt: skip
    chosen, rejected = torch.tensor(scores[:2]), torch.tensor(scores[2:])
    assert loss.item() == pytest.approx(bradley_terry_loss(chosen, rejected).item(), rel=1e-4)
    assert float(metrics["accuracy"]) == pytest.approx(float((chosen > rejected).float().mean()))
    assert metrics["loss_tokens"] == 2 and metrics["tokens"] == 5 + 3 + 4 + 6


def test_dpo_starts_at_log2_and_precomputed_reference_matches_on_the_fly(tmp_path):
    source = tiny_source(tmp_path)
    on_the_fly = DPO(beta=0.1, reference=source)
    on_the_fly.setup(torch.device("cpu"))
    policy = source.build(seed=0)
    loss, metrics = on_the_fly.loss(policy, pair_batch())
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy == reference: every reward is 0
    assert float(metrics["reward_margin"]) == 0.0 and metrics["loss_tokens"] == 2

    numpy_batch = {k: v.numpy() for k, v in pair_batch().items()}
    scored = ReferenceScorer(source, average=False, seed=0, use_gpu=False)(numpy_batch)
    precomputed = {k: torch.as_tensor(np.asarray(v)) for k, v in scored.items()}
    ids, mask, pairs = pair_inputs(pair_batch())
    ref_c, ref_r = on_the_fly.reference_logps(pair_batch(), ids, mask, pairs)
    assert torch.allclose(precomputed["ref_chosen_logp"], ref_c, atol=1e-5)
    assert torch.allclose(precomputed["ref_rejected_logp"], ref_r, atol=1e-5)
    loss_pre, _ = DPO(beta=0.1).loss(policy, precomputed)
    assert loss_pre.item() == pytest.approx(math.log(2), abs=1e-5)

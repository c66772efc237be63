"""The distillation maths against hand-computed values, and the tag-weighted loss mask on hand-made and on real
tokenized answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jobs.distill.losses import kd_loss, weighted_cross_entropy
from jobs.distill.tags import add_tag_weights, tag_weights
from jobs.train.chat_data import IGNORE

# One row, three positions, two tokens. Position 0: uniform student, teacher logits (ln 3, 0); position 1: student
# (ln 3, 0), teacher uniform; position 2 is IGNORE and its wild logits must count nowhere.
STUDENT = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [50.0, -50.0]]])
TEACHER = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0], [-50.0, 50.0]]])
LABELS = torch.tensor([[0, 1, IGNORE]])


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def softmax(logits: list[float], t: float) -> list[float]:
    e = [math.exp(x / t) for x in logits]
    return [x / sum(e) for x in e]


def test_kd_loss_at_temperature_one_matches_hand_values():
    loss, kl_mean, ce = kd_loss(STUDENT, TEACHER, LABELS, temperature=1.0, alpha=1.0)
    # KL(teacher ‖ student): position 0 is KL((.75, .25) ‖ (.5, .5)), position 1 KL((.5, .5) ‖ (.75, .25)).
    expected_kl = (kl([0.75, 0.25], [0.5, 0.5]) + kl([0.5, 0.5], [0.75, 0.25])) / 2
    assert kl_mean.item() == pytest.approx(expected_kl, rel=1e-5)
    assert kl_mean.item() == pytest.approx(0.1373265, rel=1e-5)
    # Cross-entropy of the labels: -ln 0.5 at position 0, -ln 0.25 at position 1.
    assert ce.item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(expected_kl, rel=1e-5)  # alpha 1: the KL alone


def test_temperature_softens_both_sides_and_scales_by_t_squared():
    t, alpha = 2.0, 0.25
    loss, kl_mean, ce = kd_loss(STUDENT, TEACHER, LABELS, temperature=t, alpha=alpha)
    p0 = softmax([math.log(3), 0.0], t)  # (√3, 1) / (√3 + 1) = (0.634, 0.366)
    assert p0[0] == pytest.approx(math.sqrt(3) / (math.sqrt(3) + 1))
    expected_kl = (kl(p0, [0.5, 0.5]) + kl([0.5, 0.5], softmax([math.log(3), 0.0], t))) / 2
    assert kl_mean.item() == pytest.approx(expected_kl, rel=1e-5)
    # The hard-label term ignores the temperature: the student's own distribution scores the labels.
    assert ce.item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(alpha * t**2 * expected_kl + (1 - alpha) * ce.item(), rel=1e-5)


def test_weights_turn_the_means_into_weighted_means():
    weights = torch.tensor([[3.0, 1.0, 7.0]])  # the IGNORE position's weight is dropped
    _, kl_mean, ce = kd_loss(STUDENT, TEACHER, LABELS, weights, temperature=1.0, alpha=0.5)
    kls = [kl([0.75, 0.25], [0.5, 0.5]), kl([0.5, 0.5], [0.75, 0.25])]
    assert kl_mean.item() == pytest.approx((3 * kls[0] + kls[1]) / 4, rel=1e-5)
    assert ce.item() == pytest.approx((3 * math.log(2) + math.log(4)) / 4, rel=1e-6)
    assert weighted_cross_entropy(STUDENT, LABELS, weights).item() == pytest.approx(ce.item())


def test_identical_models_have_zero_kl_and_the_gradient_moves_the_student_towards_the_teacher():
    _, kl_same, _ = kd_loss(TEACHER, TEACHER, LABELS, temperature=3.0, alpha=1.0)
    assert kl_same.item() == pytest.approx(0.0, abs=1e-7)
    student = STUDENT.clone().requires_grad_(True)
    loss, _, _ = kd_loss(student, TEACHER, LABELS, temperature=2.0, alpha=1.0)
    loss.backward()
    assert student.grad[0, 0, 0] < 0 < student.grad[0, 0, 1]  # raise token 0, as the teacher prefers it
    assert torch.all(student.grad[0, 2] == 0)  # the ignored position gets no gradient


# --- the tag-weighted loss mask -----------------------------------------------------------------------------

TAGS = ["<think>", "</think>", "<answer>", "</answer>"]


def test_tag_weights_mark_every_token_that_spells_a_tag():
    # A byte-level BPE splits tags across tokens and merges them with their neighbours ("><").
    pieces = ["<|user|>", "<think>", "?", "<|assistant|>", "<", "think", ">", "two", " plus", "</", "think", "><",
              "answer", ">", "4", "</", "answer", ">", "<|end|>"]  # fmt: skip
    labels = np.array([IGNORE] * 4 + list(range(4, len(pieces))))  # the prompt (with a tag in it) is not learned
    weights = tag_weights(pieces, labels, TAGS, 10.0)
    expected = [0, 0, 0, 0, 10, 10, 10, 1, 1, 10, 10, 10, 10, 10, 1, 10, 10, 10, 1]
    assert weights.tolist() == expected
    assert weights.dtype == np.float32
    no_tags = tag_weights(["<|assistant|>", "plain", " answer"], np.array([IGNORE, 1, 2]), TAGS, 10.0)
    assert no_tags.tolist() == [0, 1, 1]


def test_tag_weights_on_a_real_tokenized_answer(base_model_dir):
    from jobs.train.chat_data import Encoder
    from tests.jobs.train.test_post_data import settings_for

    settings = settings_for(base_model_dir)
    encoder = Encoder(settings)
    answer = "<think>two and two</think><answer>four</answer>"
    ids, labels, _ = encoder.conversation([{"role": "user", "content": "what is 2+2?"},
                                           {"role": "assistant", "content": answer}])  # fmt: skip
    n = len(ids)
    batch = {"input_ids": np.array([ids + [0] * 5]), "labels": np.array([labels + [IGNORE] * 5]),
             "length": np.array([n]), "split": np.array(["train"], dtype=object)}  # fmt: skip
    out = add_tag_weights(batch, settings.tokenizer_json, TAGS, 5.0)
    weights = out["weights"][0]
    assert out["split"].tolist() == ["train"] and weights.shape == (n + 5,)
    assert np.all(weights[n:] == 0) and np.all(weights[:n][np.array(labels) == IGNORE] == 0)
    tagged = "".join(encoder.tokenizer.decode([i]) for i, w in zip(ids, weights, strict=False) if w == 5.0)
    plain = "".join(encoder.tokenizer.decode([i]) for i, w in zip(ids, weights, strict=False) if w == 1.0)
    # The weighted tokens spell the four tags (each token whole, so a merged neighbour may come along) ...
    assert all(tag in tagged for tag in TAGS), tagged
    # ... and the content, plus the end-of-turn marker, keeps weight 1.
    assert "two and two" in plain and "four" in plain and "four" not in tagged

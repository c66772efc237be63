"""The eval maths on tiny real models, without Ray: loss and bits per character against hand computations,
batched scores against one-sequence-at-a-time scores, and multiple-choice accuracy of a model taught the answers
(100 %) and of random models (chance)."""

from __future__ import annotations

import math
import statistics

import pytest

from jobs.demo.chat import multiple_choice_rows
from jobs.eval import report
from jobs.eval.inputs import parse_question
from jobs.eval.scoring import EvalModel, ScoreSettings, choice_sequence, sequence_scores, text_windows

SETTINGS = ScoreSettings(prompt_format="chat", seq_len=16, max_new_tokens=8, batch_size=4)
DOCS = ["The river runs past the old mill.", "Anna lives in Marlow. " * 6, "Größe: 5 €"]  # one spans several windows
QUESTIONS = [parse_question(row, f"row {i}") for i, row in enumerate(multiple_choice_rows(seed=0))]


def test_text_windows_score_every_token_once():
    windows = text_windows(list(range(10, 30)), bos_id=0, seq_len=8)
    assert [w for w, _ in windows] == [[0, *range(10, 17)], [0, *range(17, 24)], [0, *range(24, 30)]]
    assert all(first == 1 for _, first in windows)
    assert choice_sequence([1, 2, 3, 4, 5], [8, 9], seq_len=4) == ([4, 5, 8, 9], 2), "the question loses its start"


def test_uniform_model_scores_ln_vocab_per_token(uniform_model_dir):
    """All weights zero: every next-token distribution is uniform, so each token costs ln V nats exactly."""
    model = EvalModel(uniform_model_dir, SETTINGS)
    vocab = model.model.config.vocab_size
    results = model.score_texts([{"text": d} for d in DOCS])
    tokens = [len(model.encode(d)) for d in DOCS]
    assert [r["tokens"] for r in results] == tokens and tokens[1] > SETTINGS.seq_len
    for r, n in zip(results, tokens, strict=True):
        assert r["nll"] == pytest.approx(n * math.log(vocab), rel=1e-5)
    metrics = report.text_metrics(results)
    assert metrics["perplexity"] == pytest.approx(vocab, rel=1e-4)
    chars, utf8 = sum(len(d) for d in DOCS), sum(len(d.encode()) for d in DOCS)
    assert chars < utf8, "ö and € are one character but two or three bytes"
    assert metrics["bits_per_char"] == pytest.approx(sum(tokens) * math.log2(vocab) / chars, rel=1e-5)
    assert metrics["bits_per_byte"] == pytest.approx(sum(tokens) * math.log2(vocab) / utf8, rel=1e-5)


def test_batched_scores_equal_one_sequence_at_a_time(base_model_dir):
    """Padding and length-sorting change nothing: each score equals a plain forward pass over that sequence."""
    import torch

    model = EvalModel(base_model_dir, SETTINGS).model
    sequences = [([5, 9, 14, 3, 7, 7, 2], 3), ([4, 8], 1), ([11, 12, 13, 14, 15], 2), ([6, 6, 6], 1), ([9, 3, 5], 2)]
    batched = sequence_scores(model, sequences, batch_size=3, pad_id=1)
    for (ids, first), (total, count) in zip(sequences, batched, strict=True):
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        by_hand = sum(logps[t - 1, ids[t]].item() for t in range(first, len(ids)))
        assert (total, count) == (pytest.approx(by_hand, abs=1e-4), len(ids) - first)


def accuracy(model: EvalModel) -> float:
    payloads = [{"question": q.question, "choices": list(q.choices)} for q in QUESTIONS]
    return report.choice_metrics(QUESTIONS, model.score_choices(payloads))["mc_accuracy"]


def teach_answers(model: EvalModel, steps: int, lr: float) -> None:
    """Plain torch: maximise the log-likelihood of each right answer after its question (the chat-rendered
    prompt), as SFT would."""
    import torch

    from jobs.eval.scoring import _padded
    from jobs.train.losses import sequence_logps

    rows = []
    for q in QUESTIONS:
        context, _ = model.context(q.question)
        rows.append(choice_sequence(context, model.encode(q.choices[q.answer]), SETTINGS.seq_len * 4))
    ids, attention, scored = _padded(rows, model.pad_id, "cpu")
    net = model.model.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    for _ in range(steps):
        loss = -sequence_logps(net(input_ids=ids, attention_mask=attention).logits, ids, scored, average=True).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval().requires_grad_(False)


@pytest.fixture
def one_thread():
    """A tiny model trains fastest on one thread, and the machine is shared with other tests."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_multiple_choice_accuracy_of_taught_and_random_models(base_model_dir, one_thread):
    import torch

    settings = ScoreSettings(prompt_format="chat", seq_len=64, max_new_tokens=8, batch_size=32)
    model = EvalModel(base_model_dir, settings)
    chance = report.chance(QUESTIONS)
    random_scores = []
    for seed in range(4):  # fresh random weights: a model that knows nothing
        torch.manual_seed(seed)
        with torch.no_grad():
            for param in model.model.parameters():
                param.normal_(0, 0.02) if param.dim() > 1 else param.fill_(1.0)
        random_scores.append(accuracy(model))
    print(f"random models: {random_scores}, chance {chance:.2f}")
    assert chance == 0.25 and abs(statistics.fmean(random_scores) - chance) < 0.12
    teach_answers(model, steps=150, lr=1e-2)
    assert accuracy(model) == 1.0

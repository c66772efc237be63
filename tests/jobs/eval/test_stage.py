"""The eval stage end to end on the session Ray cluster: two models scored by Ray Data, the comparison table, the
details files and the marker; and a bad question file stopping the stage before any model loads."""

from __future__ import annotations

import json
import math
import os

import pytest

from jobs.context import StageContext
from jobs.eval import stage
from pipelines.errors import StageError
from pipelines.spec.eval import EvalStage

pytestmark = [pytest.mark.cluster]

PROMPTS = ["What is the opposite of warm?", "Where does Anna live?"]


def context(spec: EvalStage, out: str) -> StageContext:
    return StageContext("eval", "eval", spec, "t", "r", "k", out)


@pytest.fixture
def text_file(tmp_path) -> str:
    path = tmp_path / "text.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"The {i} boats crossed the river at dawn."}) + "\n" for i in range(12))
    )
    return str(path)


def test_stage_compares_models_in_one_table(ray_session, base_model_dir, uniform_model_dir, chat_dir, text_file,
                                            tmp_path):  # fmt: skip
    spec = EvalStage(
        kind="eval", models=[base_model_dir, uniform_model_dir], text=text_file, text_rows=10,
        multiple_choice=f"{chat_dir}/mc.jsonl", prompts=PROMPTS, max_new_tokens=6, batch_size=8,
    )  # fmt: skip
    out = str(tmp_path / "eval")
    metrics = stage.run(context(spec, out))
    json.dumps(metrics)  # it becomes the _SUCCESS marker
    assert metrics["rows"] == {"documents": 10, "questions": 24, "prompts": 2}
    base, uniform = os.path.basename(base_model_dir), os.path.basename(uniform_model_dir)
    assert list(metrics["models"]) == [base, uniform]
    vocab = json.load(open(os.path.join(uniform_model_dir, "config.json")))["vocab_size"]
    assert metrics["models"][uniform]["perplexity"] == pytest.approx(vocab, rel=1e-4), "uniform over the vocabulary"
    assert metrics["models"][base]["loss"] < math.log(vocab) + 0.5  # a random init is close to uniform too
    for row in metrics["models"].values():
        assert 0 <= row["mc_accuracy"] <= 1 and row["bits_per_char"] > 0

    table = open(os.path.join(out, "results.md")).read()
    assert "| model | loss | perplexity | bits/char | MC accuracy | MC accuracy (per char) |" in table
    assert f"| {uniform} | {math.log(vocab):.4f} | {vocab:.2f} |" in table
    assert "24 questions; picking at random scores 25.0%" in table and "## Where does Anna live?" in table
    assert json.load(open(os.path.join(out, "results.json")))["models"][1]["model"] == uniform
    generations = [json.loads(line) for line in open(os.path.join(out, "generations.jsonl"))]
    assert [(g["model"], g["prompt"]) for g in generations] == [(m, p) for m in (base, uniform) for p in PROMPTS]
    assert all(0 < g["tokens"] <= 6 for g in generations if g["model"] == base)
    picks = [json.loads(line) for line in open(os.path.join(out, "multiple_choice.jsonl"))]
    assert len(picks) == 48 and all(len(p["logps"]) == 4 for p in picks)


def test_bad_question_file_fails_before_scoring(base_model_dir, tmp_path):
    bad = tmp_path / "mc.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": "C"}\n')
    spec = EvalStage(kind="eval", models=[base_model_dir], multiple_choice=str(bad))
    with pytest.raises(StageError, match=f"stages.eval.multiple_choice: line 1 of '{bad}': answer 'C' is out of "
                                         "range for 2 choices; use a letter A-B or a 0-based index 0-1"):  # fmt: skip
        stage.run(context(spec, str(tmp_path / "out")))


def test_model_without_weights_or_lm_head_is_refused(tmp_path, chat_dir):
    reward = tmp_path / "rm"
    reward.mkdir()
    (reward / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    spec = EvalStage(kind="eval", models=[str(tmp_path / "nowhere"), str(reward)], prompts=["hi"])
    with pytest.raises(StageError, match=r"stages.eval.models\[0\]: '.*nowhere' is not a Hugging Face model"):
        stage.run(context(spec, str(tmp_path / "out")))
    spec = EvalStage(kind="eval", models=[str(reward)], prompts=["hi"])
    with pytest.raises(StageError, match=r"models\[0\]: the model at .* is a LlamaForSequenceClassification, not a "
                                         "causal language model"):  # fmt: skip
        stage.run(context(spec, str(tmp_path / "out")))

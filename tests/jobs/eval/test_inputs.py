"""Reading what an eval stage measures: question files in the C-Eval/MMLU shape with every mistake named by line,
documents with the held-out filter and the row cap, and the demo's question set."""

from __future__ import annotations

import json

import pytest

from jobs.demo.chat import multiple_choice_rows
from jobs.eval.inputs import load_documents, load_questions
from jobs.train.packing import is_validation
from pipelines.errors import StageError

FIELD = "stages.eval.multiple_choice"


def write_lines(path, rows: list) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_answers_as_letters_indices_and_c_eval_columns(tmp_path):
    path = write_lines(tmp_path / "mc.jsonl", [
        {"question": "2 + 2?", "choices": ["3", "4", "5"], "answer": "B"},
        {"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": 0},
        {"question": "Largest?", "A": "ant", "B": "cat", "C": "whale", "D": "dog", "answer": "c"},
        "",
    ])  # fmt: skip
    questions = load_questions(path, FIELD)
    assert [(q.choices, q.answer) for q in questions] == [
        (("3", "4", "5"), 1),
        (("Paris", "Rome"), 0),
        (("ant", "cat", "whale", "dog"), 2),
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"choices": ["a", "b"], "answer": "A"}, "line 2 of '{path}' has no 'question'; every line needs question, "
                                                 "choices and answer"),
        ({"question": "q", "answer": "A"}, "line 2 of '{path}' has no 'choices'; give a list of answers (or C-Eval's"),
        ({"question": "q", "choices": ["a", "b"]}, "line 2 of '{path}' has no 'answer'"),
        ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": "E"},
         "line 2 of '{path}': answer 'E' is out of range for 4 choices; use a letter A-D or a 0-based index 0-3"),
        ({"question": "q", "choices": ["a", "b", "c"], "answer": 3},
         "line 2 of '{path}': answer 3 is out of range for 3 choices; use a letter A-C or a 0-based index 0-2"),
        ({"question": "q", "choices": ["a", "b"], "answer": "2"},
         "answer '2' is neither a letter nor an index; give the right choice as a letter A-B or a 0-based index 0-1"),
        ({"question": "q", "choices": ["only"], "answer": 0}, "'choices' must be a list of at least two non-empty"),
        ("{not json", "line 2 of '{path}' is not a JSON object; write one question per line as"),
    ],
)  # fmt: skip
def test_a_bad_line_names_itself_and_the_fix(tmp_path, row, message):
    good = {"question": "q", "choices": ["a", "b"], "answer": "A"}
    path = write_lines(tmp_path / "mc.jsonl", [good, row])
    with pytest.raises(StageError) as exc:
        load_questions(path, FIELD)
    assert str(exc.value).startswith(f"{FIELD}: ") and message.format(path=path) in str(exc.value)


def test_demo_questions_parse_and_rotate_the_right_answer(tmp_path):
    rows = multiple_choice_rows(seed=0)
    questions = load_questions(write_lines(tmp_path / "mc.jsonl", rows), FIELD)
    assert len(questions) == 24 and all(len(q.choices) == 4 for q in questions)
    assert [q.answer for q in questions] == [i % 4 for i in range(24)], "a position bias cannot beat chance"
    assert questions[0].choices[questions[0].answer] == "The opposite of warm is cold."


def test_documents_held_out_and_capped(tmp_path):
    docs = [f"Document number {i} about the river and the mill." for i in range(400)]
    path = write_lines(tmp_path / "text.jsonl", [{"text": d} for d in docs] + [{"text": ""}, {"body": "x"}])
    assert load_documents(path, "stages.eval.text", "text", limit=10, held_out_fraction=None) == docs[:10]
    held = load_documents(path, "stages.eval.text", "text", limit=1000, held_out_fraction=0.1)
    assert held == [d for d in docs if is_validation(d, 0.1)] and 10 < len(held) < 80
    with pytest.raises(StageError, match="no documents to score .* none held out with held_out_fraction 1e-09"):
        load_documents(path, "stages.eval.text", "text", limit=10, held_out_fraction=1e-9)


def test_parquet_documents_need_the_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"body": ["a b c", "d e f"]}), str(tmp_path / "data" / "part-0.parquet"))
    assert load_documents(str(tmp_path), "f", "body", limit=5, held_out_fraction=None) == ["a b c", "d e f"]
    with pytest.raises(StageError, match="has no column 'text' \\(columns: body\\); set text_column"):
        load_documents(str(tmp_path), "f", "text", limit=5, held_out_fraction=None)

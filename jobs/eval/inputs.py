"""What an eval stage measures, read and checked on the driver before any model loads (no torch here).

Models are earlier stages' `model/` directories or Hugging Face paths; text documents come from a data stage or
files; multiple-choice questions from C-Eval/MMLU-shaped JSONL, every line checked so a bad file fails with its
line number and the fix instead of a wrong score.
"""

from __future__ import annotations

import io
import json
import os
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from jobs.context import StageContext
from jobs.train.chat_datasets import data_files
from jobs.train.packing import is_validation
from jobs.train.sources import check_causal_lm, model_dir, tokenizer_info
from pipelines import storage
from pipelines.errors import StageError
from pipelines.spec.eval import EvalStage

LETTERS = string.ascii_uppercase
MC_SHAPE = '{"question": "...", "choices": ["...", "..."], "answer": "A"}'


@dataclass(frozen=True)
class ModelRef:
    """One row of the results table: its label (the stage name, or the directory's name) and the model's URI."""

    label: str
    uri: str


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int  # 0-based index into choices


@dataclass(frozen=True)
class Work:
    """Everything every model is measured on."""

    documents: list[str] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    text_uri: str | None = None

    def items(self) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """(task, index, payload) for every document, question and prompt."""
        for i, doc in enumerate(self.documents):
            yield "text", i, {"text": doc}
        for i, q in enumerate(self.questions):
            yield "choice", i, {"question": q.question, "choices": list(q.choices)}
        for i, prompt in enumerate(self.prompts):
            yield "generate", i, {"prompt": prompt}


# --- models ----------------------------------------------------------------------------------------------------


def resolve_models(ctx: StageContext, spec: EvalStage) -> list[ModelRef]:
    """The model directory behind every entry of `models`, each checked to hold a causal LM and its tokenizer."""
    refs = []
    for i, ref in enumerate(spec.models):
        where = f"stages.{ctx.name}.models[{i}]"
        uri = model_dir(ctx, ref)
        check_causal_lm(uri, where, "to score")
        info = tokenizer_info(uri, where)
        if spec.prompt_format == "chat" and info.chat_template is None and (spec.multiple_choice or spec.prompts):
            raise StageError(
                f"{where}: the tokenizer in '{uri}' has no chat template, so questions and prompts cannot be shown "
                f"as a chat; set stages.{ctx.name}.prompt_format: plain, or adopt the tokenizer with a tokenizer "
                "stage (it adds ChatML)."
            )
        refs.append(ModelRef(ref if ref in ctx.inputs else os.path.basename(uri.rstrip("/")), uri))
    labels = [r.label for r in refs]
    if len(set(labels)) < len(labels):  # two directories with the same name: show whole paths
        refs = [ModelRef(r.uri if labels.count(r.label) > 1 else r.label, r.uri) for r in refs]
    return refs


# --- text ------------------------------------------------------------------------------------------------------


def load_documents(uri: str, where: str, column: str, limit: int, held_out_fraction: float | None) -> list[str]:
    """Up to `limit` non-empty documents in file order, only held-out ones when `held_out_fraction` is set."""
    docs: list[str] = []
    seen = 0
    for text in _texts(data_files(uri, where), column, where):
        if not isinstance(text, str) or not text.strip():
            continue
        seen += 1
        if held_out_fraction is None or is_validation(text, held_out_fraction):
            docs.append(text)
            if len(docs) == limit:
                break
    if not docs:
        raise StageError(
            f"{where}: no documents to score in '{uri}' ({seen} read, none held out with held_out_fraction "
            f"{held_out_fraction}). Point text at more data, or set held_out_fraction: null to score every document."
        )
    return docs


def _texts(files: list[str], column: str, where: str) -> Iterator[Any]:
    for uri in files:
        if uri.endswith(".parquet"):
            yield from parquet_column(uri, column, where)
            continue
        for _, record in json_lines(uri):
            if isinstance(record, dict):
                yield record.get(column)


def parquet_column(uri: str, column: str, where: str) -> Iterator[Any]:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        if column not in parquet.schema_arrow.names:
            raise StageError(
                f"{where}: '{uri}' has no column '{column}' (columns: {', '.join(parquet.schema_arrow.names)}); "
                "set text_column to the one holding the text."
            )
        for batch in parquet.iter_batches(columns=[column], batch_size=256):
            yield from batch.column(0).to_pylist()


def json_lines(uri: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value or None when the line is not JSON) for every non-blank line, streamed: a capped
    read of a large file stops early."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path) as raw, io.TextIOWrapper(raw, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError:
                    yield number, None


# --- multiple choice -------------------------------------------------------------------------------------------


def load_questions(uri: str, where: str) -> list[Question]:
    """Every question of the JSONL files at `uri`; the first malformed line raises a StageError naming it."""
    files = [f for f in data_files(uri, where) if not f.endswith(".parquet")]
    if not files:
        raise StageError(f"{where}: '{uri}' holds no JSONL file; write the questions one per line as {MC_SHAPE}")
    questions = [parse_question(record, f"{where}: line {n} of '{f}'") for f in files for n, record in json_lines(f)]
    if not questions:
        raise StageError(f"{where}: '{uri}' holds no questions; write them one per line as {MC_SHAPE}")
    return questions


def parse_question(record: Any, where: str) -> Question:
    if not isinstance(record, dict):
        raise StageError(f"{where} is not a JSON object; write one question per line as {MC_SHAPE}")
    for key in ("question", "answer"):
        if key not in record:
            raise StageError(f"{where} has no '{key}'; every line needs question, choices and answer, as {MC_SHAPE}")
    question = record["question"]
    if not isinstance(question, str) or not question.strip():
        raise StageError(f"{where}: 'question' must be a non-empty string, got {question!r}")
    choices = _choices(record, where)
    return Question(question, choices, answer_index(record["answer"], len(choices), where))


def _choices(record: dict[str, Any], where: str) -> tuple[str, ...]:
    """`choices` as a list, or C-Eval's columns A, B, C, ... when there is no list."""
    if "choices" in record:
        raw = record["choices"]
    elif "A" in record:
        raw = [record[letter] for letter in LETTERS if letter in record]
    else:
        raise StageError(
            f"{where} has no 'choices'; give a list of answers (or C-Eval's A, B, C, D keys), as {MC_SHAPE}"
        )
    if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(c, str) and c.strip() for c in raw):
        raise StageError(f"{where}: 'choices' must be a list of at least two non-empty strings, got {raw!r}")
    return tuple(raw)


def answer_index(raw: Any, n_choices: int, where: str) -> int:
    """The 0-based index of the right choice from a letter ('A' is the first) or a 0-based integer index."""
    last_letter, last_index = LETTERS[min(n_choices, len(LETTERS)) - 1], n_choices - 1
    if isinstance(raw, str) and len(raw.strip()) == 1 and raw.strip().upper() in LETTERS:
        index = LETTERS.index(raw.strip().upper())
    elif isinstance(raw, int) and not isinstance(raw, bool):
        index = raw
    else:
        raise StageError(
            f"{where}: answer {raw!r} is neither a letter nor an index; give the right choice as a letter A-"
            f"{last_letter} or a 0-based index 0-{last_index}"
        )
    if not 0 <= index < n_choices:
        raise StageError(
            f"{where}: answer {raw!r} is out of range for {n_choices} choices; use a letter A-{last_letter} or a "
            f"0-based index 0-{last_index}"
        )
    return index


# --- all of it -------------------------------------------------------------------------------------------------


def load_work(ctx: StageContext, spec: EvalStage) -> Work:
    field_ = f"stages.{ctx.name}"
    documents, text_uri = [], None
    if spec.text is not None:
        text_uri = ctx.input(spec.text).uri if spec.text in ctx.inputs else spec.text
        documents = load_documents(text_uri, f"{field_}.text", spec.text_column, spec.text_rows,
                                   spec.held_out_fraction)  # fmt: skip
    questions = []
    if spec.multiple_choice is not None:
        mc = spec.multiple_choice
        questions = load_questions(ctx.input(mc).uri if mc in ctx.inputs else mc, f"{field_}.multiple_choice")
    return Work(documents, questions, list(spec.prompts), text_uri)

"""Chat and preference records to token ids: parsing the common layouts, the chat template, the assistant mask.

Pure Python (no Ray, no torch), so every rule here is unit-tested directly; `chat_datasets.py` runs it inside
Ray Data. A record that cannot be used raises `Drop(reason)`; the pipeline counts reasons and never crashes.

Layouts read (`data_format: auto` tells them apart per record):
- conversations: {"conversations"|"messages": [{"role", "content"} | {"from", "value"}, ...]} (minimind sft_*.jsonl,
  ShareGPT, OpenAI); ShareGPT's top-level "system" string is honoured.
- alpaca: {"instruction", "input", "output"} (+ optional "system").
- preference: {"prompt", "chosen", "rejected"} with strings (TRL's standard layout) or a message list as prompt
  and [assistant message] lists as answers (TRL's conversational layout), or {"chosen", "rejected"} as whole
  conversations that share everything but the last assistant turn (minimind dpo.jsonl).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

IGNORE = -100  # label of tokens the loss skips (Hugging Face convention)
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
FORMATS = ("conversations", "alpaca", "preference")
PROBE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
    {"role": "assistant", "content": "A2"},
]

Message = dict[str, str]


class Drop(Exception):
    """A record the stage skips, with the reason it is counted under."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TemplateError(Exception):
    """The chat template cannot be split into prompt and assistant parts (a property of the tokenizer)."""


@dataclass(frozen=True)
class Pair:
    prompt: list[Message]  # ends with a user turn
    chosen: str
    rejected: str


# --- parsing ---------------------------------------------------------------------------------------------------


def parse_json(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, TypeError):
        raise Drop("bad_json") from None
    if not isinstance(record, dict):
        raise Drop("bad_json")
    return record


def detect(record: dict[str, Any]) -> str:
    """Which layout a record is in; unknown shapes are dropped."""
    if "chosen" in record or "rejected" in record:
        return "preference"
    if "conversations" in record or "messages" in record:
        return "conversations"
    if "instruction" in record or "output" in record:
        return "alpaca"
    raise Drop("unknown_format")


def record_format(record: dict[str, Any], declared: str) -> str:
    found = detect(record)
    if declared != "auto" and found != declared:
        raise Drop(f"not_{declared}")
    return found


def message(raw: Any) -> Message:
    """One message as {role, content} with the role normalised (ShareGPT's human/gpt become user/assistant)."""
    if not isinstance(raw, dict):
        raise Drop("bad_message")
    role = raw.get("role", raw.get("from"))
    content = raw.get("content", raw.get("value"))
    if not isinstance(role, str) or not role:
        raise Drop("missing_role")
    if role.lower() not in ROLES:
        raise Drop("unknown_role")
    if not isinstance(content, str):
        raise Drop("missing_content")
    return {"role": ROLES[role.lower()], "content": content}


def messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise Drop("empty_conversation")
    return [message(m) for m in raw]


def with_system(msgs: list[Message], system: Any, default: str | None) -> list[Message]:
    """Prepend a system turn (the record's own, else the stage's default) unless the conversation has one."""
    if msgs and msgs[0]["role"] == "system":
        return msgs
    text = system if isinstance(system, str) and system else default
    return [{"role": "system", "content": text}, *msgs] if text else msgs


def check_turns(msgs: list[Message]) -> list[Message]:
    """A trainable conversation: at least one assistant turn, none of them empty."""
    answers = [m for m in msgs if m["role"] == "assistant"]
    if not answers:
        raise Drop("no_assistant")
    if any(not m["content"].strip() for m in answers):
        raise Drop("empty_assistant")
    return msgs


def to_conversation(record: dict[str, Any], declared: str = "auto", system: str | None = None) -> list[Message]:
    """The messages of a conversation or Alpaca record."""
    found = record_format(record, declared)
    if found == "preference":
        raise Drop("preference_record")  # pairs belong to reward_model / dpo stages
    if found == "alpaca":
        instruction, extra, output = (record.get(k, "") for k in ("instruction", "input", "output"))
        if not isinstance(instruction, str) or not instruction.strip() or not isinstance(extra, str):
            raise Drop("missing_instruction")
        if not isinstance(output, str):
            raise Drop("empty_assistant")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    else:
        msgs = messages(record.get("conversations", record.get("messages")))
    return check_turns(with_system(msgs, record.get("system"), system))


def answer(raw: Any) -> str:
    """A chosen/rejected answer: a string, or a list holding one assistant message (TRL's conversational layout)."""
    if isinstance(raw, list) and len(raw) == 1:
        msg = message(raw[0])
        if msg["role"] != "assistant":
            raise Drop("bad_pair_format")
        raw = msg["content"]
    if not isinstance(raw, str):
        raise Drop("bad_pair_format")
    return raw


def split_conversation(raw: Any) -> tuple[list[Message], str]:
    """A whole conversation as (prompt messages, final assistant answer)."""
    msgs = messages(raw)
    if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
        raise Drop("no_final_assistant")
    return msgs[:-1], msgs[-1]["content"]


def to_pair(record: dict[str, Any], declared: str = "auto", system: str | None = None) -> Pair:
    if record_format(record, declared) != "preference":
        raise Drop("not_preference")
    chosen_raw, rejected_raw = record.get("chosen"), record.get("rejected")
    if "prompt" in record:
        prompt_raw = record["prompt"]
        if isinstance(prompt_raw, str):
            if not prompt_raw.strip():
                raise Drop("missing_prompt")
            prompt = [{"role": "user", "content": prompt_raw}]
        else:
            prompt = messages(prompt_raw)
        chosen, rejected = answer(chosen_raw), answer(rejected_raw)
    elif isinstance(chosen_raw, list) and isinstance(rejected_raw, list) and len(chosen_raw) > 1:
        prompt, chosen = split_conversation(chosen_raw)
        rejected_prompt, rejected = split_conversation(rejected_raw)
        if rejected_prompt != prompt:
            raise Drop("prompt_mismatch")
    else:
        raise Drop("missing_prompt")
    if not chosen.strip() or not rejected.strip():
        raise Drop("empty_response")
    if chosen.strip() == rejected.strip():
        raise Drop("identical_pair")
    if prompt[-1]["role"] != "user":
        raise Drop("bad_pair_format")
    return Pair(with_system(prompt, record.get("system"), system), chosen, rejected)


# --- the chat template ---------------------------------------------------------------------------------------


def _raise(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    """A Hugging Face chat template rendered the way transformers renders it (sandboxed Jinja, trimmed blocks)."""

    def __init__(self, source: str, bos_token: str | None = None, eos_token: str | None = None) -> None:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.globals["raise_exception"] = _raise
        self.template = env.from_string(source)
        self.tokens = {"bos_token": bos_token or "", "eos_token": eos_token or ""}

    def render(self, msgs: list[Message], add_generation_prompt: bool = False) -> str:
        return self.template.render(messages=msgs, add_generation_prompt=add_generation_prompt, **self.tokens)

    def pieces(self, msgs: list[Message]) -> list[tuple[str, bool]]:
        """The rendered conversation as (text, is_assistant) pieces. An assistant piece is what the template adds
        for that turn after the generation prompt: the answer and its end-of-turn marker, what the model must
        learn to produce. Found by rendering growing prefixes, so it works for any template that renders a
        conversation as a growing string (ChatML, Llama 3, Mistral ...)."""
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, msg in enumerate(msgs):
            if msg["role"] != "assistant":
                continue
            prompt = self.render(msgs[:i], add_generation_prompt=True)
            full = self.render(msgs[: i + 1])
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise TemplateError(
                    "the chat template does not render a conversation as a growing string (turn "
                    f"{i}: the prompt does not extend the previous turns, or the answer does not extend the prompt)"
                )
            pieces += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
            done = full
        rest = self.render(msgs)
        if not rest.startswith(done):
            raise TemplateError("the chat template renders trailing turns inconsistently")
        if rest[len(done) :]:
            pieces.append((rest[len(done) :], False))
        return [(text, trained) for text, trained in pieces if text]


def check_template(template: ChatTemplate) -> str:
    """Raise TemplateError unless the template splits a probe conversation into prompt and assistant pieces;
    returns the text a template puts after an answer (e.g. '<|im_end|>\\n'), whose special token ends a turn."""
    pieces = template.pieces(PROBE)
    answers = [text for text, trained in pieces if trained]
    if len(answers) != 2 or not answers[0].startswith("A1"):
        raise TemplateError("the chat template does not render each assistant answer right after its prompt")
    return answers[0][len("A1") :]


# --- tokenization --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeSettings:
    """Everything a Ray Data worker needs to turn records into rows (plain values, pickled to the workers)."""

    tokenizer_json: str
    chat_template: str
    bos_token: str | None
    eos_token: str | None
    pad_id: int
    max_len: int
    overlong: str  # "truncate" | "drop"
    data_format: str  # "auto" or one of FORMATS
    system_prompt: str | None
    val_fraction: float

    @property
    def key(self) -> str:
        return hashlib.sha1(repr(self).encode("utf-8")).hexdigest()


class Encoder:
    """Records to token ids under the settings' template, length limit and overflow rule."""

    def __init__(self, settings: EncodeSettings) -> None:
        from jobs.train.packing import _tokenizer

        self.settings = settings
        self.tokenizer = _tokenizer(settings.tokenizer_json)
        self.template = ChatTemplate(settings.chat_template, settings.bos_token, settings.eos_token)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def conversation(self, msgs: list[Message]) -> tuple[list[int], list[int], bool]:
        """(input ids, labels with IGNORE outside assistant pieces, truncated)."""
        pieces = self.pieces(msgs)
        ids: list[int] = []
        labels: list[int] = []
        for (_, trained), piece_ids in zip(pieces, self.tokenize([text for text, _ in pieces]), strict=True):
            ids += piece_ids
            labels += piece_ids if trained else [IGNORE] * len(piece_ids)
        ids, labels, truncated = self.fit(ids, labels)
        if all(label == IGNORE for label in labels):
            raise Drop("too_long")  # truncation left no assistant token to learn from
        return ids, labels, truncated

    def pair(self, pair: Pair) -> tuple[int, list[int], list[int], bool]:
        """(prompt length, prompt + chosen ids, prompt + rejected ids, truncated); the prompt is shared."""
        prompt_text = self.template.render(pair.prompt, add_generation_prompt=True)
        answers = []
        for text in (pair.chosen, pair.rejected):
            full = self.template.render([*pair.prompt, {"role": "assistant", "content": text}])
            if not full.startswith(prompt_text):
                raise Drop("template_mismatch")
            answers.append(full[len(prompt_text) :])
        prompt_ids, chosen_ids, rejected_ids = self.tokenize([prompt_text, *answers])
        if len(prompt_ids) >= self.settings.max_len:
            raise Drop("prompt_too_long")
        chosen, _, cut_c = self.fit(prompt_ids + chosen_ids)
        rejected, _, cut_r = self.fit(prompt_ids + rejected_ids)
        if chosen == rejected:
            raise Drop("identical_after_truncation")
        return len(prompt_ids), chosen, rejected, cut_c or cut_r

    def pieces(self, msgs: list[Message]) -> list[tuple[str, bool]]:
        try:
            return self.template.pieces(msgs)
        except TemplateError:
            raise Drop("template_mismatch") from None

    def fit(self, ids: list[int], labels: list[int] | None = None) -> tuple[list[int], list[int], bool]:
        """Apply max_len: cut the end off (`truncate`) or drop the record (`drop`)."""
        labels = labels if labels is not None else ids
        limit = self.settings.max_len
        if len(ids) <= limit:
            return ids, labels, False
        if self.settings.overlong == "drop":
            raise Drop("too_long")
        return ids[:limit], labels[:limit], True

"""Prompts for rollouts: chat records of any layout the post-training stages read, cut before the first answer,
rendered with the policy's chat template (generation prompt added) and tokenized. Read on the driver: prompt sets
are small next to training corpora."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jobs.train.chat_data import ChatTemplate, Drop, Message, messages, with_system
from jobs.train.chat_datasets import data_files
from pipelines import storage
from pipelines.errors import StageError


@dataclass(frozen=True)
class Prompt:
    messages: list[Message]  # ends with the user turn the answer replies to
    text: str  # that user turn's content: what a reward function sees as the prompt
    ids: list[int]  # the rendered prompt with the generation prompt, tokenized


def prompt_messages(record: dict[str, Any]) -> list[Message]:
    """The turns before the first assistant answer of a record, ending with a user turn."""
    if "prompt" in record:
        raw = record["prompt"]
        msgs = [{"role": "user", "content": raw}] if isinstance(raw, str) else messages(raw)
    elif "conversations" in record or "messages" in record:
        msgs = messages(record.get("conversations", record.get("messages")))
    elif isinstance(record.get("chosen"), list):
        msgs = messages(record["chosen"])
    elif "instruction" in record:
        extra = record.get("input") or ""
        msgs = [{"role": "user", "content": f"{record['instruction']}\n\n{extra}" if extra else record["instruction"]}]
    else:
        raise Drop("unknown_format")
    first_answer = next((i for i, m in enumerate(msgs) if m["role"] == "assistant"), len(msgs))
    msgs = msgs[:first_answer]
    if not msgs or msgs[-1]["role"] != "user" or not msgs[-1]["content"].strip():
        raise Drop("no_prompt")
    return with_system(msgs, record.get("system"), None)


def read_records(files: list[str]) -> Iterator[Any]:
    for uri in files:
        if uri.endswith(".parquet"):
            import pyarrow.parquet as pq

            fs, path = storage.filesystem(uri)
            yield from pq.read_table(path, filesystem=fs).to_pylist()
        else:
            for line in storage.read_text(uri).splitlines():
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        yield None


def load_prompts(
    uri: str, field: str, tokenizer_json: str, template: ChatTemplate, system: str | None, max_len: int
) -> tuple[list[Prompt], Counter]:
    """Unique prompts in file order, and the count of records dropped by reason."""
    from jobs.train.packing import _tokenizer

    tok = _tokenizer(tokenizer_json)
    dropped: Counter = Counter()
    prompts: dict[str, Prompt] = {}
    for record in read_records(data_files(uri, field)):
        try:
            if not isinstance(record, dict):
                raise Drop("bad_json")
            msgs = with_system(prompt_messages(record), None, system)
            rendered = template.render(msgs, add_generation_prompt=True)
            ids = tok.encode(rendered, add_special_tokens=False).ids
            if len(ids) > max_len:
                raise Drop("prompt_too_long")
        except Drop as drop:
            dropped[drop.reason] += 1
            continue
        prompts.setdefault(rendered, Prompt(msgs, msgs[-1]["content"], ids))
    if not prompts:
        raise StageError(
            f"{field}: no usable prompt in '{uri}' (dropped: {dict(dropped) or 'none'}). Give records with a user "
            "turn (prompt, conversations/messages or alpaca layouts), or raise max_prompt_len."
        )
    return list(prompts.values()), dropped


class PromptStream:
    """Prompts in a seeded shuffled order, epoch after epoch; `position` lets a resumed run continue."""

    def __init__(self, prompts: list[Prompt], seed: int, position: int = 0) -> None:
        self.prompts, self.seed, self.position = prompts, seed, position

    def order(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[Prompt]:
        out = []
        for _ in range(n):
            epoch, index = divmod(self.position, len(self.prompts))
            out.append(self.prompts[self.order(epoch)[index]])
            self.position += 1
        return out

"""Deterministic chat and preference data for the post-training demo (SFT, reward model, DPO). No downloads.

    python -m jobs.demo.chat OUT_DIR [--n-sft 2000] [--n-pairs 1200] [--seed 0]

writes `sft.jsonl` (conversations in the three common layouts mixed: minimind's `conversations` with role/content,
ShareGPT's from/value, OpenAI's `messages`; plus Alpaca instruction/input/output rows), `preference.jsonl`
(prompt/chosen/rejected strings mixed with minimind dpo.jsonl's chosen/rejected conversations) and
`mc.jsonl` (multiple-choice questions on the same facts, for the eval stage) and `manifest.json` (what was
written, with the planted bad rows by the drop reason the stages give them).

The tasks are ones a tiny model learns in tens of steps: greeting someone by name, opposites from a fixed table,
counting, repeating three words, and where a person lives (a fixed, seeded table). Words come from the demo
corpus vocabulary, so the tokenizer trained on that corpus encodes them compactly. In preference pairs the
chosen answer is the right one; the rejected answer has a style a small model can recognise: a refusal, a
rude brush-off or babble.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from jobs.demo.vocab import NAMES, NOUNS, PLACES

OPPOSITES = {
    "warm": "cold", "old": "young", "quiet": "busy", "empty": "crowded", "narrow": "broad", "bright": "dark",
    "heavy": "light", "sunny": "rainy", "tall": "short", "modern": "ancient", "small": "large", "simple": "clever",
}  # fmt: skip
NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
SYSTEM_PROMPT = "You are a helpful assistant from Marlow."
REJECTED_STYLES = ("refusal", "rude", "babble")
REFUSALS = ("I do not know.", "I cannot help with that.", "Ask someone else.")
RUDE = ("Go away, I am busy.", "That is a silly question.", "Stop asking me things.")

# Planted bad rows, by the reason the sft / reward_model / dpo stages drop them with.
PLANTED_SFT = {"bad_json": 2, "unknown_role": 3, "missing_role": 2, "empty_assistant": 3, "no_assistant": 2}
PLANTED_PAIRS = {"bad_json": 2, "identical_pair": 4, "empty_response": 2}

Task = Callable[[random.Random], tuple[str, str]]


def homes(seed: int) -> dict[str, str]:
    """The fixed person -> town table the `where` task asks about (the same for every row of a dataset)."""
    rng = random.Random(seed)
    return {name: rng.choice(PLACES) for name in NAMES}


def greet(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    return f"Hello, my name is {name}.", f"Hello {name}, nice to meet you!"


def opposite(rng: random.Random) -> tuple[str, str]:
    word, opp = rng.choice(list(OPPOSITES.items()))
    return f"What is the opposite of {word}?", f"The opposite of {word} is {opp}."


def count(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(1, 7)
    stop = start + rng.randint(2, 4)
    words = NUMBER_WORDS[start : stop + 1]
    return f"Count from {words[0]} to {words[-1]}.", ", ".join(words).capitalize() + "."


def repeat(rng: random.Random) -> tuple[str, str]:
    words = " ".join(rng.sample(NOUNS, 3))
    return f"Repeat after me: {words}.", f"{words.capitalize()}."


def where(table: dict[str, str]) -> Task:
    def task(rng: random.Random) -> tuple[str, str]:
        name = rng.choice(sorted(table))
        return f"Where does {name} live?", f"{name} lives in {table[name]}."

    return task


def tasks(seed: int) -> list[Task]:
    return [greet, opposite, count, repeat, where(homes(seed))]


def rejected_answer(rng: random.Random, style: str) -> str:
    if style == "refusal":
        return rng.choice(REFUSALS)
    if style == "rude":
        return rng.choice(RUDE)
    word = rng.choice(NOUNS)
    return " ".join([word] * rng.randint(4, 7)) + "."


# --- SFT rows ------------------------------------------------------------------------------------------------


def conversation(rng: random.Random, task_list: list[Task]) -> list[dict[str, str]]:
    """One to three exchanges, sometimes after a system prompt."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.2 else []
    for _ in range(rng.choice((1, 1, 2, 3))):
        question, answer = rng.choice(task_list)(rng)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def as_layout(messages: list[dict[str, str]], layout: str) -> dict[str, Any]:
    if layout == "sharegpt":
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in messages]}
    if layout == "openai":
        return {"messages": messages}
    return {"conversations": messages}  # minimind sft_*.jsonl


def alpaca_row(rng: random.Random, task_list: list[Task]) -> dict[str, Any]:
    question, answer = rng.choice(task_list)(rng)
    instruction, _, rest = question.partition(": ")
    if rest:  # "Repeat after me: a b c." -> instruction + input
        return {"instruction": instruction + ".", "input": rest, "output": answer}
    return {"instruction": question, "input": "", "output": answer}


def planted_sft(reason: str, rng: random.Random, task_list: list[Task]) -> str:
    question, answer = rng.choice(task_list)(rng)
    if reason == "bad_json":
        return '{"conversations": [{"role": "user", "content": "' + question
    rows = {
        "unknown_role": [{"role": "robot", "content": question}, {"role": "assistant", "content": answer}],
        "missing_role": [{"content": question}, {"role": "assistant", "content": answer}],
        "empty_assistant": [{"role": "user", "content": question}, {"role": "assistant", "content": "  "}],
        "no_assistant": [{"role": "user", "content": question}],
    }
    return json.dumps({"conversations": rows[reason]})


def sft_lines(n: int, seed: int) -> tuple[list[str], Counter]:
    rng = random.Random(seed)
    task_list = tasks(seed)
    lines, layouts = [], Counter()
    for _ in range(n):
        layout = rng.choices(("minimind", "sharegpt", "openai", "alpaca"), weights=(5, 2, 2, 1))[0]
        layouts[layout] += 1
        row = alpaca_row(rng, task_list) if layout == "alpaca" else as_layout(conversation(rng, task_list), layout)
        lines.append(json.dumps(row))
    for reason, k in PLANTED_SFT.items():
        for _ in range(k):
            lines.insert(rng.randrange(len(lines) + 1), planted_sft(reason, rng, task_list))
    return lines, layouts


# --- preference rows -----------------------------------------------------------------------------------------


def pair(rng: random.Random, task_list: list[Task], styles: tuple[str, ...]) -> tuple[str, str, str]:
    question, answer = rng.choice(task_list)(rng)
    return question, answer, rejected_answer(rng, rng.choice(styles))


def pair_row(question: str, chosen: str, rejected: str, layout: str) -> dict[str, Any]:
    if layout == "strings":
        return {"prompt": question, "chosen": chosen, "rejected": rejected}
    user = {"role": "user", "content": question}
    return {  # minimind dpo.jsonl: two whole conversations sharing the prompt
        "chosen": [user, {"role": "assistant", "content": chosen}],
        "rejected": [user, {"role": "assistant", "content": rejected}],
    }


def preference_pairs(n: int, seed: int, styles: tuple[str, ...] = REJECTED_STYLES) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) triples, without layout or planted rows: what tests evaluate models on."""
    rng = random.Random(seed + 1)
    task_list = tasks(seed)
    return [pair(rng, task_list, styles) for _ in range(n)]


def preference_lines(n: int, seed: int) -> tuple[list[str], Counter]:
    rng = random.Random(seed + 2)
    lines, layouts = [], Counter()
    for question, chosen, rejected in preference_pairs(n, seed):
        layout = rng.choice(("strings", "minimind"))
        layouts[layout] += 1
        lines.append(json.dumps(pair_row(question, chosen, rejected, layout)))
    for reason, k in PLANTED_PAIRS.items():
        for _ in range(k):
            question, answer = rng.choice(tasks(seed))(rng)
            if reason == "bad_json":
                line = '{"prompt": "' + question
            elif reason == "identical_pair":
                line = json.dumps(pair_row(question, answer, answer, rng.choice(("strings", "minimind"))))
            else:
                line = json.dumps({"prompt": question, "chosen": answer, "rejected": ""})
            lines.insert(rng.randrange(len(lines) + 1), line)
    return lines, layouts


# --- multiple-choice questions --------------------------------------------------------------------------------

MC_CHOICES = 4
MC_PEOPLE = 12

Fact = tuple[str, str, list[str]]  # (question, right answer, wrong answers), answers worded as in the SFT data


def opposite_facts(rng: random.Random) -> list[Fact]:
    facts = []
    for word, opp in OPPOSITES.items():
        others = rng.sample([o for o in OPPOSITES.values() if o != opp], MC_CHOICES - 1)
        facts.append((f"What is the opposite of {word}?", f"The opposite of {word} is {opp}.",
                      [f"The opposite of {word} is {o}." for o in others]))  # fmt: skip
    return facts


def home_facts(rng: random.Random, table: dict[str, str]) -> list[Fact]:
    facts = []
    for name in sorted(table)[:MC_PEOPLE]:
        others = rng.sample([p for p in PLACES if p != table[name]], MC_CHOICES - 1)
        facts.append((f"Where does {name} live?", f"{name} lives in {table[name]}.",
                      [f"{name} lives in {p}." for p in others]))  # fmt: skip
    return facts


def multiple_choice_rows(seed: int) -> list[dict[str, Any]]:
    """C-Eval/MMLU-shaped questions on facts the chat data teaches (every opposite, where a dozen people live).
    The right answer's position cycles through A-D, so a model that ignores the question scores chance."""
    rng = random.Random(seed + 3)  # its own stream: the SFT and preference rows stay as they were
    rows = []
    for i, (question, right, wrong) in enumerate(opposite_facts(rng) + home_facts(rng, homes(seed))):
        position = i % MC_CHOICES
        choices = [*wrong[:position], right, *wrong[position:]]
        rows.append({"question": question, "choices": choices, "answer": "ABCD"[position]})
    return rows


def write_demo_chat(out_dir: str, n_sft: int = 2000, n_pairs: int = 1200, seed: int = 0) -> dict[str, Any]:
    os.makedirs(out_dir, exist_ok=True)
    sft, sft_layouts = sft_lines(n_sft, seed)
    prefs, pref_layouts = preference_lines(n_pairs, seed)
    mc = [json.dumps(row) for row in multiple_choice_rows(seed)]
    for name, lines in (("sft.jsonl", sft), ("preference.jsonl", prefs), ("mc.jsonl", mc)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    manifest = {
        "seed": seed,
        "sft": {"rows": len(sft), "good": n_sft, "layouts": dict(sft_layouts), "planted": PLANTED_SFT},
        "preference": {"rows": len(prefs), "good": n_pairs, "layouts": dict(pref_layouts), "planted": PLANTED_PAIRS},
        "homes": homes(seed),
        "multiple_choice": {"rows": len(mc), "choices": MC_CHOICES},
    }
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo.chat", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--n-sft", type=int, default=2000, help="good SFT rows (planted bad rows come on top)")
    parser.add_argument("--n-pairs", type=int, default=1200, help="good preference pairs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    manifest = write_demo_chat(args.out_dir, args.n_sft, args.n_pairs, args.seed)
    print(f"wrote {manifest['sft']['rows']} SFT rows and {manifest['preference']['rows']} preference rows "
          f"to {args.out_dir}")  # fmt: skip


if __name__ == "__main__":
    main()

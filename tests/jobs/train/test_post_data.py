"""Chat and preference records: layouts, drop reasons, the chat template split, the assistant-only mask, packing.
Pure functions, no Ray."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from jobs.demo.chat import PLANTED_PAIRS, PLANTED_SFT
from jobs.train import chat_datasets
from jobs.train.chat_data import (
    IGNORE,
    ChatTemplate,
    Drop,
    Encoder,
    EncodeSettings,
    Pair,
    TemplateError,
    check_template,
    parse_json,
    to_conversation,
    to_pair,
)
from jobs.train.sources import tokenizer_info
from pipelines.errors import StageError
from pipelines.spec.train import CHATML_TEMPLATE

USER, ASSISTANT = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}


def drop_reason(fn, *args) -> str:
    with pytest.raises(Drop) as info:
        fn(*args)
    return info.value.reason


def settings_for(model_dir: str, **overrides) -> EncodeSettings:
    info = tokenizer_info(model_dir, "model")
    fields = {
        "tokenizer_json": info.tokenizer_json, "chat_template": info.chat_template, "bos_token": info.bos_token,
        "eos_token": info.eos_token, "pad_id": info.pad_id, "max_len": 128, "overlong": "truncate",
        "data_format": "auto", "system_prompt": None, "val_fraction": 0.1,
    }  # fmt: skip
    return EncodeSettings(**{**fields, **overrides})


# --- layouts and drop reasons --------------------------------------------------------------------------------


def test_conversation_layouts_normalise_to_role_content():
    minimind = {"conversations": [USER, ASSISTANT]}
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]
    sharegpt = {"system": "Be brief.", "conversations": turns}
    openai = {"messages": [{"role": "system", "content": "S"}, USER, ASSISTANT]}
    assert to_conversation(minimind) == [USER, ASSISTANT]
    assert to_conversation(sharegpt) == [{"role": "system", "content": "Be brief."}, USER, ASSISTANT]
    assert to_conversation(openai)[0] == {"role": "system", "content": "S"}
    assert to_conversation(minimind, "auto", "Default.")[0] == {"role": "system", "content": "Default."}
    assert to_conversation(openai, "auto", "Default.")[0]["content"] == "S"  # its own system turn wins


def test_alpaca_rows_become_one_exchange():
    row = {"instruction": "Repeat after me.", "input": "a b c", "output": "A b c."}
    assert to_conversation(row) == [
        {"role": "user", "content": "Repeat after me.\n\na b c"},
        {"role": "assistant", "content": "A b c."},
    ]
    assert to_conversation({"instruction": "Say hi.", "input": "", "output": "Hi."})[0]["content"] == "Say hi."
    assert drop_reason(to_conversation, {"instruction": "Say hi.", "output": ""}) == "empty_assistant"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"conversations": [{"role": "robot", "content": "x"}, ASSISTANT]}, "unknown_role"),
        ({"conversations": [{"content": "x"}, ASSISTANT]}, "missing_role"),
        ({"conversations": [USER, {"role": "assistant", "content": " "}]}, "empty_assistant"),
        ({"conversations": [USER, {"role": "assistant"}]}, "missing_content"),
        ({"conversations": [USER]}, "no_assistant"),
        ({"conversations": []}, "empty_conversation"),
        ({"text": "plain"}, "unknown_format"),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "preference_record"),
    ],
)
def test_bad_conversations_are_dropped_with_a_reason(record, reason):
    assert drop_reason(to_conversation, record) == reason


def test_declared_format_drops_other_layouts():
    assert drop_reason(to_conversation, {"conversations": [USER, ASSISTANT]}, "alpaca") == "not_alpaca"
    assert drop_reason(parse_json, '{"conversations": [') == "bad_json"
    assert drop_reason(parse_json, "[1, 2]") == "bad_json"


def test_preference_layouts():
    strings = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}
    trl = {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [{"role": "assistant", "content": "Go away."}]}
    minimind = {
        "chosen": [USER, ASSISTANT],
        "rejected": [USER, {"role": "assistant", "content": "Go away."}],
    }
    expected = Pair(prompt=[USER], chosen="Hello!", rejected="Go away.")
    assert to_pair(strings) == to_pair(trl) == to_pair(minimind) == expected
    assert to_pair(strings, "auto", "Sys").prompt[0] == {"role": "system", "content": "Sys"}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"prompt": "Hi", "chosen": "Same.", "rejected": "Same. "}, "identical_pair"),
        ({"chosen": [USER, ASSISTANT], "rejected": [USER, ASSISTANT]}, "identical_pair"),
        ({"prompt": "Hi", "chosen": "Hello!", "rejected": ""}, "empty_response"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "missing_prompt"),
        ({"chosen": "a", "rejected": "b"}, "missing_prompt"),
        ({"chosen": [USER, ASSISTANT], "rejected": [{"role": "user", "content": "Yo"}, ASSISTANT]}, "prompt_mismatch"),
        ({"chosen": [USER, ASSISTANT], "rejected": [ASSISTANT, USER]}, "no_final_assistant"),
        ({"conversations": [USER, ASSISTANT]}, "not_preference"),
    ],
)
def test_bad_pairs_are_dropped_with_a_reason(record, reason):
    assert drop_reason(to_pair, record) == reason


# --- the template split and the assistant-only mask ----------------------------------------------------------


def test_chatml_splits_into_prompt_and_assistant_pieces():
    template = ChatTemplate(CHATML_TEMPLATE)
    msgs = [{"role": "system", "content": "S"}, USER, ASSISTANT, {"role": "user", "content": "More"}, ASSISTANT]
    pieces = template.pieces(msgs)
    assert [text for text, trained in pieces if trained] == ["Hello!<|im_end|>\n", "Hello!<|im_end|>\n"]
    assert "".join(text for text, _ in pieces) == template.render(msgs)
    first_prompt = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert pieces[0] == (first_prompt, False)
    assert check_template(template) == "<|im_end|>\n"


def test_a_template_that_rewrites_history_is_refused():
    # Renders only the last message: a later render does not extend an earlier one.
    template = ChatTemplate("{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}")
    with pytest.raises(TemplateError, match="growing string"):
        check_template(template)


def test_assistant_only_mask(base_model_dir):
    encoder = Encoder(settings_for(base_model_dir))
    msgs = [USER, ASSISTANT, {"role": "user", "content": "Count from one to three."},
            {"role": "assistant", "content": "One, two, three."}]  # fmt: skip
    ids, labels, truncated = encoder.conversation(msgs)
    assert not truncated and len(ids) == len(labels)
    decode = encoder.tokenizer.decode
    trained = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert [label for label in labels if label != IGNORE] == trained  # labels are the ids themselves
    spans, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == IGNORE and current:
            spans.append(decode(current, skip_special_tokens=False))
            current = []
        elif label != IGNORE:
            current.append(token)
    spans.append(decode(current, skip_special_tokens=False))
    assert spans == ["Hello!<|im_end|>\n", "One, two, three.<|im_end|>\n"]
    untrained = [i for i, label in zip(ids, labels, strict=True) if label == IGNORE]
    assert decode(untrained, skip_special_tokens=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        "<|im_start|>user\nCount from one to three.<|im_end|>\n<|im_start|>assistant\n"
    )
    # The ids equal the tokenization of the whole rendered text: splitting at turn boundaries changed nothing.
    whole = encoder.tokenize([encoder.template.render(msgs)])[0]
    assert ids == whole


def test_overlong_conversations_truncate_or_drop(base_model_dir):
    long_answer = {"role": "assistant", "content": " ".join(["garden"] * 200)}
    ids, labels, truncated = Encoder(settings_for(base_model_dir, max_len=32)).conversation([USER, long_answer])
    assert truncated and len(ids) == len(labels) == 32 and labels[-1] != IGNORE
    dropping = Encoder(settings_for(base_model_dir, max_len=32, overlong="drop"))
    assert drop_reason(dropping.conversation, [USER, long_answer]) == "too_long"
    long_prompt = [{"role": "user", "content": " ".join(["garden"] * 200)}, ASSISTANT]
    assert drop_reason(Encoder(settings_for(base_model_dir, max_len=32)).conversation, long_prompt) == "too_long"


def test_pairs_share_the_prompt_and_truncate(base_model_dir):
    encoder = Encoder(settings_for(base_model_dir, max_len=40))
    prompt_len, chosen, rejected, truncated = encoder.pair(Pair([USER], "Hello!", "Go away."))
    assert chosen[:prompt_len] == rejected[:prompt_len] and not truncated
    assert encoder.tokenizer.decode(chosen[prompt_len:], skip_special_tokens=False) == "Hello!<|im_end|>\n"
    long = Pair([USER], " ".join(["garden"] * 50), "Go away.")
    _, chosen, rejected, truncated = encoder.pair(long)
    assert truncated and len(chosen) == 40 and len(rejected) < 40
    short = Encoder(settings_for(base_model_dir, max_len=8))
    assert drop_reason(short.pair, Pair([USER], "a", "b")) == "prompt_too_long"


# --- batch functions ---------------------------------------------------------------------------------------


def test_demo_data_drops_exactly_the_planted_rows(chat_dir, base_model_dir):
    """Every planted bad row is dropped with its reason and nothing else is; the good rows split ~90/10."""
    settings = settings_for(base_model_dir)
    for name, fn, planted in (
        ("sft.jsonl", chat_datasets.encode_conversations, PLANTED_SFT),
        ("preference.jsonl", chat_datasets.encode_pairs, PLANTED_PAIRS),
    ):
        lines = np.array(open(f"{chat_dir}/{name}").read().splitlines(), dtype=object)
        rows = fn({"record": lines}, settings)
        assert Counter(r for r in rows["reason"] if r) == Counter(planted), name
        kept = rows["split"][rows["reason"] == ""]
        assert 0.03 < float(np.mean(kept == "val")) < 0.2
        assert not rows["truncated"].any()


def test_rows_are_padded_with_lengths(base_model_dir):
    settings = settings_for(base_model_dir, max_len=64)
    lines = np.array([json.dumps({"conversations": [USER, ASSISTANT]}), "{bad"], dtype=object)
    rows = chat_datasets.encode_conversations({"record": lines}, settings)
    assert list(rows["reason"]) == ["", "bad_json"]
    n = int(rows["length"][0])
    assert rows["input_ids"].shape == (2, 64) and rows["input_ids"].dtype == np.int32
    assert (rows["input_ids"][0, n:] == settings.pad_id).all() and (rows["labels"][0, n:] == IGNORE).all()


def test_packing_keeps_conversations_whole_with_their_own_positions():
    lengths = np.array([5, 3, 4, 2], dtype=np.int32)
    ids = np.zeros((4, 8), dtype=np.int32)
    for i, n in enumerate(lengths):
        ids[i, :n] = 10 * (i + 1) + np.arange(n)
    labels = np.where(ids > 0, ids, IGNORE).astype(np.int32)
    packed = chat_datasets.pack_rows({"input_ids": ids, "labels": labels, "length": lengths}, max_len=8, pad_id=0)
    assert packed["length"].tolist() == [8, 6]  # first fit, longest first: [5, 3] and [4, 2]
    assert packed["input_ids"][0].tolist() == [10, 11, 12, 13, 14, 20, 21, 22]
    assert packed["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert packed["input_ids"][1].tolist() == [30, 31, 32, 33, 40, 41, 0, 0]
    assert packed["labels"][1, 6:].tolist() == [IGNORE, IGNORE]
    assert sorted(packed["input_ids"][packed["input_ids"] > 0].tolist()) == sorted(ids[ids > 0].tolist())


def test_parquet_rows_and_stage_outputs_are_read_as_records(tmp_path, base_model_dir):
    """An earlier stage's output: Parquet under data/ (nested columns survive as JSON records)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    table = pa.table({"conversations": [[USER, ASSISTANT]], "id": ["a"]})
    pq.write_table(table, str(tmp_path / "data" / "part-0.parquet"))
    (tmp_path / "_SUCCESS").write_text("{}")
    files = chat_datasets.data_files(str(tmp_path), "stages.sft.data")
    assert files == [str(tmp_path / "data" / "part-0.parquet")]
    records = chat_datasets._rows_as_json(pq.read_table(files[0]))["record"].to_pylist()
    rows = chat_datasets.encode_conversations({"record": np.array(records, dtype=object)}, settings_for(base_model_dir))
    assert list(rows["reason"]) == [""]
    with pytest.raises(StageError, match="stages.sft.data: no .jsonl, .json or .parquet files at"):
        chat_datasets.data_files(str(tmp_path / "nothing-here"), "stages.sft.data")

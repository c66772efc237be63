"""The tokenizer stage: byte-level BPE trained on Parquet text, saved as a Hugging Face tokenizer."""

from __future__ import annotations

import json
import os

import pytest

from jobs import tokenizer as tokenizer_stage
from jobs.context import StageContext, StageOutput
from pipelines.errors import StageError
from pipelines.spec.train import TokenizerStage
from tests.jobs.train.corpus import write_parquet


def context(tmp_path, spec: TokenizerStage, inputs: dict[str, StageOutput] | None = None) -> StageContext:
    return StageContext(
        name="tok",
        kind="tokenizer",
        spec=spec,
        pipeline_name="t",
        run_id="r",
        cache_key="k",
        out_uri=str(tmp_path / "out"),
        inputs=inputs or {},
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return write_parquet(str(tmp_path_factory.mktemp("data")), n_docs=300)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    spec = TokenizerStage(kind="tokenizer", data="curate", vocab_size=400, extra_special_tokens=["<tool>"])
    inputs = {"curate": StageOutput(name="curate", kind="data", uri=data_dir, marker={})}
    metrics = tokenizer_stage.run(context(tmp, spec, inputs))
    return str(tmp / "out"), metrics


def test_trained_tokenizer_files_and_metrics(trained):
    out, metrics = trained
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= set(os.listdir(out))
    config = json.load(open(os.path.join(out, "tokenizer_config.json")))
    assert "<|im_start|>" in config["chat_template"]
    special = json.load(open(os.path.join(out, "special_tokens_map.json")))
    assert special["eos_token"] == "<|endoftext|>" and special["pad_token"] == "<|pad|>"
    assert set(special["additional_special_tokens"]) == {"<|im_start|>", "<|im_end|>", "<tool>"}
    assert metrics["source"] == "trained" and metrics["sample_docs"] == 300
    assert 256 < metrics["vocab_size"] <= 400
    assert metrics["chars_per_token"] > 2  # merges learned: far better than one byte per token


def test_trained_tokenizer_round_trips_and_renders_chat(trained):
    from transformers import AutoTokenizer

    out, _ = trained
    tok = AutoTokenizer.from_pretrained(out)
    text = "The quick fox jumps over the lazy dog. Ünïcödé ✓ 中文"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level: nothing is unknown
    assert tok.convert_tokens_to_ids("<|endoftext|>") == tok.eos_token_id == 0
    assert tok.pad_token_id == 1
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert len(tok("<|im_start|>", add_special_tokens=False)["input_ids"]) == 1


def test_adopts_existing_tokenizer_and_adds_missing_pieces(trained, tmp_path):
    from transformers import AutoTokenizer

    out, _ = trained
    bare = tmp_path / "bare"
    os.makedirs(bare)
    tok = AutoTokenizer.from_pretrained(out)
    tok.pad_token = None
    tok.chat_template = None
    tok.save_pretrained(bare)
    assert not (bare / "chat_template.jinja").exists()
    spec = TokenizerStage(kind="tokenizer", pretrained=str(bare), pad_token="<pad2>")
    metrics = tokenizer_stage.run(context(tmp_path, spec))
    adopted = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert metrics["source"] == "pretrained"
    assert adopted.pad_token == "<pad2>" and adopted.chat_template


def test_missing_text_column_is_a_stage_error(data_dir, tmp_path):
    spec = TokenizerStage(kind="tokenizer", data=data_dir, text_column="body", vocab_size=400)
    with pytest.raises(StageError, match="has no column 'body'"):
        tokenizer_stage.run(context(tmp_path, spec))


def test_spec_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of `data`"):
        TokenizerStage(kind="tokenizer")
    with pytest.raises(ValueError, match="exactly one of `data`"):
        TokenizerStage(kind="tokenizer", data="curate", pretrained="/tok")
    many = [f"<t{i}>" for i in range(50)]
    with pytest.raises(ValueError, match=r"vocab_size \(300\) must exceed"):
        TokenizerStage(kind="tokenizer", data="curate", vocab_size=300, extra_special_tokens=many)

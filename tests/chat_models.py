"""The chat data and the small chat models that training, RLHF, distillation, eval, quantize and serving tests
start from: session fixtures, registered once for the whole suite (tests/conftest.py), so each is built once."""

from __future__ import annotations

import pytest

from jobs import tokenizer as tokenizer_stage
from jobs.context import StageContext
from pipelines.spec.train import TokenizerStage


@pytest.fixture(scope="session")
def chat_dir(tmp_path_factory) -> str:
    """The demo chat and preference data (jobs.demo.chat), smaller than the demo's."""
    from jobs.demo.chat import write_demo_chat

    out = str(tmp_path_factory.mktemp("chat"))
    write_demo_chat(out, n_sft=400, n_pairs=400, seed=0)
    return out


@pytest.fixture(scope="session")
def chat_tokenizer_dir(chat_dir, tmp_path_factory) -> str:
    """A ChatML tokenizer trained on the chat data (the tokenizer stage's output)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text_dir = tmp_path_factory.mktemp("chat-text")
    lines = [line for name in ("sft.jsonl", "preference.jsonl") for line in open(f"{chat_dir}/{name}")]
    (text_dir / "data").mkdir()
    pq.write_table(pa.table({"text": lines}), str(text_dir / "data" / "part-0.parquet"))
    tok_dir = str(tmp_path_factory.mktemp("chat-tokenizer"))
    spec = TokenizerStage(kind="tokenizer", data=str(text_dir), vocab_size=512)
    tokenizer_stage.run(StageContext("tokenizer", "tokenizer", spec, "t", "r", "k", tok_dir))
    return tok_dir


def random_chat_model(tokenizer_dir: str, out: str, preset: str) -> str:
    """A randomly initialised model of the preset saved as a Hugging Face directory with the tokenizer's files:
    what a pretrain stage exports, without spending a training run on it."""
    from jobs.train.export import copy_tokenizer
    from jobs.train.model import ModelSource, model_config
    from jobs.train.sources import tokenizer_info
    from pipelines.spec.train import ModelConfig

    info = tokenizer_info(tokenizer_dir, "tokenizer")
    ModelSource(config=model_config(ModelConfig(preset=preset), info, seq_len=128)).build(seed=0).save_pretrained(out)
    copy_tokenizer(tokenizer_dir, out)
    return out


@pytest.fixture(scope="session")
def base_model_dir(chat_tokenizer_dir, tmp_path_factory) -> str:
    """A random tiny chat Llama (see random_chat_model)."""
    return random_chat_model(chat_tokenizer_dir, str(tmp_path_factory.mktemp("base-model")), "tiny")


@pytest.fixture(scope="session")
def moe_model_dir(chat_tokenizer_dir, tmp_path_factory) -> str:
    """A random tiny-moe chat model (Qwen3-MoE) with the same tokenizer."""
    return random_chat_model(chat_tokenizer_dir, str(tmp_path_factory.mktemp("moe-model")), "tiny-moe")

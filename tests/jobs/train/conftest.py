"""Shared inputs for training tests: a template-sentence corpus as Parquet and a tokenizer trained on it."""

from __future__ import annotations

import pytest

from jobs import tokenizer as tokenizer_stage
from jobs.context import StageContext
from pipelines.spec.train import PretrainStage, TokenizerStage
from tests.jobs.train.corpus import write_parquet

# Small enough for a 2-core machine: seq 64, micro-batch 8, 2 workers, lr high enough to learn in tens of steps.
TINY = {
    "kind": "pretrain",
    "model": {"preset": "tiny"},
    "schedule": {
        "steps": 10, "seq_len": 64, "micro_batch_size": 8, "eval_every": 5, "eval_batches": 4,
        "checkpoint_every": 5, "log_every": 5,
    },
    "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
    "scaling": {"num_workers": 2},
    "val_fraction": 0.1,
}  # fmt: skip


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> str:
    # ~2000 documents of ~60 tokens: ~120k tokens, so two workers run ~90 steps before an epoch ends.
    return write_parquet(str(tmp_path_factory.mktemp("corpus")), n_docs=2000, shards=4)


@pytest.fixture(scope="session")
def tokenizer_dir(corpus_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("tokenizer"))
    spec = TokenizerStage(kind="tokenizer", data=corpus_dir, vocab_size=512)
    tokenizer_stage.run(StageContext("tokenizer", "tokenizer", spec, "t", "r", "k", out))
    return out


def pretrain_spec(corpus_dir: str, tokenizer_dir: str, **overrides) -> PretrainStage:
    """The TINY spec with nested overrides (dicts are merged one level deep)."""
    fields = {**TINY, "data": corpus_dir, "tokenizer": tokenizer_dir}
    for key, value in overrides.items():
        fields[key] = {**fields.get(key, {}), **value} if isinstance(value, dict) else value
    return PretrainStage(**fields)


def pretrain_context(spec: PretrainStage, out_uri: str) -> StageContext:
    return StageContext("pretrain", "pretrain", spec, "t", "r", "k", out_uri)


# --- post-training (sft, reward_model, dpo): the chat data and models are tests/chat_models.py's --------------


def post_context(kind: str, spec, out_uri: str) -> StageContext:
    return StageContext(kind, kind, spec, "t", "r", "k", out_uri)

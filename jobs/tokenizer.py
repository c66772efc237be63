"""The `tokenizer` stage: train a byte-level BPE on a sample of curated text, or adopt an existing tokenizer.

Either way the output root holds a Hugging Face fast tokenizer (tokenizer.json, tokenizer_config.json with the
chat template, special_tokens_map.json, chat_template.jinja) that AutoTokenizer, the training stages and vLLM read.
The tokenizer trains in the driver process: `tokenizers` is multi-threaded Rust and a sample fits in memory.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from jobs.context import StageContext
from jobs.train import sources
from pipelines import storage
from pipelines.errors import StageError
from pipelines.spec.train import CHATML_TOKENS, TokenizerStage

READ_BATCH_ROWS = 4096
STATS_DOCS = 2000  # documents of the sample encoded afterwards to measure characters per token


def run(ctx: StageContext) -> dict[str, Any]:
    spec: TokenizerStage = ctx.spec
    local = tempfile.mkdtemp(prefix="llmctl-tokenizer-")
    try:
        if spec.pretrained is not None:
            tokenizer = adopt(sources.resolve(ctx, spec.pretrained), spec)
            metrics: dict[str, Any] = {"source": "pretrained"}
        else:
            files = sources.parquet_files(sources.resolve(ctx, spec.data or ""), f"stages.{ctx.name}.data")
            texts = sample_texts(files, spec.text_column, spec.sample_docs, spec.seed)
            ctx.log("training byte-level BPE (vocab %d) on %d documents", spec.vocab_size, len(texts))
            tokenizer = wrap(train_bpe(texts, spec), spec)
            metrics = {"source": "trained", **sample_stats(tokenizer, texts)}
        save(tokenizer, local)
        storage.upload_dir(local, ctx.out_uri)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return {**metrics, "vocab_size": len(tokenizer), "special_tokens": tokenizer.all_special_tokens}


def sample_texts(files: list[str], text_column: str, limit: int, seed: int) -> list[str]:
    """Up to `limit` non-empty documents, reading the files in a seeded random order."""
    order = list(files)
    random.Random(seed).shuffle(order)
    texts: list[str] = []
    for uri in order:
        for batch in _read_column(uri, text_column):
            texts.extend(t for t in batch if t)
            if len(texts) >= limit:
                return texts[:limit]
    if not texts:
        raise StageError(f"tokenizer: the data has no non-empty '{text_column}' values in {len(files)} file(s)")
    return texts


def _read_column(uri: str, column: str) -> Iterator[list[str]]:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        if column not in parquet.schema_arrow.names:
            raise StageError(
                f"tokenizer: '{uri}' has no column '{column}' (columns: {', '.join(parquet.schema_arrow.names)}); "
                f"set text_column to the one holding the text"
            )
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=[column]):
            yield batch.column(0).to_pylist()


def train_bpe(texts: list[str], spec: TokenizerStage) -> Any:
    """A byte-level BPE (GPT-2 style: every byte is a base token, so no text is ever unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=spec.special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def wrap(tokenizer: Any, spec: TokenizerStage) -> Any:
    """The `tokenizers` object as a transformers fast tokenizer with its special tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    named = {spec.eos_token, spec.pad_token}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=spec.eos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        additional_special_tokens=[t for t in spec.special_tokens() if t not in named],
    )
    fast.chat_template = spec.template()
    return fast


def adopt(uri: str, spec: TokenizerStage) -> Any:
    """An existing fast tokenizer, given the pad token, EOS and chat template it lacks."""
    from transformers import AutoTokenizer

    with storage.local_copy(uri) as path:
        if not os.path.exists(os.path.join(path, "tokenizer.json")):
            raise StageError(
                f"tokenizer.pretrained: '{uri}' has no tokenizer.json; training needs a fast (Rust) tokenizer. "
                f"Save it with a fast tokenizer class, or train one from data instead."
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
    missing: dict[str, Any] = {}
    if tokenizer.eos_token is None:
        missing["eos_token"] = spec.eos_token
    if tokenizer.pad_token is None:
        missing["pad_token"] = spec.pad_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = spec.template()
        if spec.chat_template == "chatml":
            missing["additional_special_tokens"] = [t for t in CHATML_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(missing)
    return tokenizer


def save(tokenizer: Any, directory: str) -> None:
    """save_pretrained, plus the files older readers (vLLM, transformers 4.x) look for: the chat template inside
    tokenizer_config.json and special_tokens_map.json."""
    tokenizer.save_pretrained(directory)
    config_path = os.path.join(directory, "tokenizer_config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["chat_template"] = tokenizer.chat_template
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    special = {name: getattr(tokenizer, name) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    special = {k: v for k, v in special.items() if v is not None}
    extra = [t for t in tokenizer.all_special_tokens if t not in special.values()]
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
        json.dump({**special, "additional_special_tokens": extra}, f, indent=2, ensure_ascii=False)


def sample_stats(tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    """Size of the training sample and characters per token on its first documents (compression)."""
    subset = texts[:STATS_DOCS]
    tokens = sum(len(ids) for ids in tokenizer(subset, add_special_tokens=False)["input_ids"])
    return {
        "sample_docs": len(texts),
        "sample_chars": sum(len(t) for t in texts),
        "chars_per_token": round(sum(len(t) for t in subset) / max(1, tokens), 4),
    }

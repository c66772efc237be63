"""Where a training stage's inputs live: an earlier stage's output or a path the user gave."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.context import StageContext
from pipelines import storage
from pipelines.errors import StageError


def resolve(ctx: StageContext, ref: str) -> str:
    """The URI behind a reference field: the referenced stage's output, or the value as a path or URI."""
    if ref in ctx.inputs:
        return ctx.input(ref).uri
    return storage.absolute(ref)


def model_dir(ctx: StageContext, ref: str) -> str:
    """The Hugging Face directory behind a model reference: the referenced stage's `model/`, or the value as a path
    or URI."""
    return ctx.input(ref).path("model") if ref in ctx.inputs else storage.absolute(ref)


def check_causal_lm(uri: str, field: str, use: str) -> None:
    """`uri` must be a Hugging Face directory of a causal LM; `use` says what the stage needs its LM head for."""
    config_uri = storage.join(uri, "config.json")
    if not storage.exists(config_uri):
        raise StageError(
            f"{field}: '{uri}' is not a Hugging Face model directory (no config.json). Name an earlier pretrain, "
            "sft, dpo, grpo, ppo or distill stage, or a directory with config.json, weights and tokenizer files."
        )
    architectures = storage.read_json(config_uri).get("architectures") or []
    if architectures and not any(a.endswith("ForCausalLM") for a in architectures):
        raise StageError(
            f"{field}: the model at '{uri}' is a {', '.join(architectures)}, not a causal language model, so it "
            f"has no next-token distribution {use}; name a pretrain, sft, dpo, grpo, ppo or distill stage, or a "
            "model with a language-modelling head."
        )


def parquet_files(uri: str, field: str) -> list[str]:
    """Parquet shards of a data stage output (`<uri>/data/*.parquet`) or of a plain directory of Parquet files."""
    for root in (storage.join(uri, "data"), uri):
        files = storage.list_files(root, suffix=".parquet")
        if files:
            return files
    raise StageError(
        f"{field}: no Parquet files under '{uri}' or '{storage.join(uri, 'data')}'. Point it at a data stage or a "
        f"directory of .parquet files with a text column."
    )


@dataclass(frozen=True)
class TokenizerInfo:
    """What training needs from a tokenizer directory: its serialized fast tokenizer and special-token ids."""

    uri: str
    tokenizer_json: str
    vocab_size: int  # including added tokens
    eos_id: int
    bos_id: int | None
    pad_id: int | None
    chat_template: str | None = None  # Jinja source, from tokenizer_config.json or chat_template.jinja
    bos_token: str | None = None
    eos_token: str | None = None


def tokenizer_info(uri: str, field: str) -> TokenizerInfo:
    """Read tokenizer.json and tokenizer_config.json of a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer

    path = storage.join(uri, "tokenizer.json")
    if not storage.exists(path):
        raise StageError(
            f"{field}: '{uri}' has no tokenizer.json; point it at a tokenizer stage or a Hugging Face tokenizer "
            f"directory saved by a fast tokenizer."
        )
    config_path = storage.join(uri, "tokenizer_config.json")
    config = storage.read_json(config_path) if storage.exists(config_path) else {}
    text = storage.read_text(path)
    tok = Tokenizer.from_str(text)
    ids = {name: _token_id(tok, config, name) for name in ("eos_token", "bos_token", "pad_token")}
    if ids["eos_token"] is None:
        raise StageError(
            f"{field}: the tokenizer at '{uri}' defines no eos_token in tokenizer_config.json; documents are packed "
            f"with an end-of-text separator, so add one (the tokenizer stage does this)."
        )
    return TokenizerInfo(
        uri=uri,
        tokenizer_json=text,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        eos_id=ids["eos_token"],
        bos_id=ids["bos_token"],
        pad_id=ids["pad_token"],
        chat_template=chat_template(uri, config),
        bos_token=_token_text(config, "bos_token"),
        eos_token=_token_text(config, "eos_token"),
    )


def chat_template(uri: str, config: dict[str, Any]) -> str | None:
    """The tokenizer's chat template: chat_template.jinja (transformers >= 4.43 saves it there) or the
    tokenizer_config.json entry (a string, or a list of named templates of which 'default' is used)."""
    path = storage.join(uri, "chat_template.jinja")
    if storage.exists(path):
        return storage.read_text(path)
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _token_text(config: dict[str, Any], name: str) -> str | None:
    value = config.get(name)
    if isinstance(value, dict):  # an AddedToken serialised as a dict
        value = value.get("content")
    return value if isinstance(value, str) else None


def _token_id(tok: Any, config: dict[str, Any], name: str) -> int | None:
    value = _token_text(config, name)
    return tok.token_to_id(value) if value is not None else None

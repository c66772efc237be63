"""What the sft, reward_model and dpo runners share: the starting model, its chat tokenizer, the data and the fit.

A post-training stage starts from a Hugging Face directory (an earlier stage's `model/` or a path) that carries
its tokenizer and chat template; the export copies those files, so the chain pretrain -> sft -> dpo -> serve
needs no tokenizer reference after pretraining.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from jobs.context import StageContext
from jobs.train import chat_datasets, launch
from jobs.train.chat_data import ChatTemplate, EncodeSettings, TemplateError, check_template
from jobs.train.job import for_stage
from jobs.train.model import ModelSource
from jobs.train.objectives import Objective
from jobs.train.pretrain import copy_tree
from jobs.train.sources import TokenizerInfo, model_dir, tokenizer_info
from pipelines import storage
from pipelines.artifacts import STATE_DIR
from pipelines.errors import StageError
from pipelines.spec.post import PostTrainStage


@dataclass(frozen=True)
class Base:
    """The starting point of a post-training stage: model directory, its tokenizer and the encode settings."""

    model_uri: str
    tokenizer: TokenizerInfo
    settings: EncodeSettings
    stop_token_ids: tuple[int, ...]
    files: list[str]

    def source(self, **kwargs: Any) -> ModelSource:
        return ModelSource(
            pretrained_uri=self.model_uri,
            pad_token_id=self.settings.pad_id,
            stop_token_ids=self.stop_token_ids,
            **kwargs,
        )


def model_uri(ctx: StageContext, ref: str) -> str:
    """The Hugging Face directory behind `model`: an earlier stage's `model/` or the path given."""
    uri = model_dir(ctx, ref)
    if not storage.exists(storage.join(uri, "config.json")):
        raise StageError(
            f"stages.{ctx.name}.model: '{uri}' is not a Hugging Face model directory (no config.json). Name an "
            "earlier pretrain, sft, dpo, grpo, ppo or distill stage, or a directory with config.json, weights and "
            "tokenizer files."
        )
    return uri


def resolve(ctx: StageContext, spec: PostTrainStage) -> Base:
    """Model, tokenizer, template and data files of a stage, checked before any Ray work starts."""
    uri = model_uri(ctx, spec.model)
    field = f"stages.{ctx.name}.model"
    tokenizer = tokenizer_info(uri, field)
    if tokenizer.chat_template is None:
        raise StageError(
            f"{field}: the tokenizer in '{uri}' has no chat template. Train the base model with a tokenizer stage "
            "(it writes ChatML), or adopt this tokenizer with a tokenizer stage (`pretrained: <dir>`), which adds one."
        )
    check_positions(uri, spec, ctx.name)
    settings = EncodeSettings(
        tokenizer_json=tokenizer.tokenizer_json,
        chat_template=tokenizer.chat_template,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        pad_id=tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id,
        max_len=spec.schedule.seq_len,
        overlong=spec.overlong,
        data_format=spec.data_format,
        system_prompt=spec.system_prompt,
        val_fraction=spec.val_fraction,
    )
    data_uri = ctx.input(spec.data).uri if spec.data in ctx.inputs else spec.data
    files = chat_datasets.data_files(data_uri, f"stages.{ctx.name}.data")
    return Base(uri, tokenizer, settings, stop_tokens(tokenizer, field), files)


def check_positions(uri: str, spec: PostTrainStage, stage: str) -> None:
    limit = storage.read_json(storage.join(uri, "config.json")).get("max_position_embeddings")
    if isinstance(limit, int) and spec.schedule.seq_len > limit:
        raise StageError(
            f"stages.{stage}.schedule.seq_len ({spec.schedule.seq_len}) exceeds the max_position_embeddings "
            f"({limit}) of the model at '{uri}'; lower schedule.seq_len to at most {limit}."
        )


def stop_tokens(tokenizer: TokenizerInfo, field: str) -> tuple[int, ...]:
    """Special tokens the chat template puts after an answer (ChatML's <|im_end|>): generation must stop there,
    so the export lists them as EOS tokens next to the tokenizer's own."""
    from jobs.train.packing import _tokenizer

    template = ChatTemplate(tokenizer.chat_template or "", tokenizer.bos_token, tokenizer.eos_token)
    try:
        suffix = check_template(template)
    except TemplateError as exc:
        raise StageError(
            f"{field}: {exc}. Post-training needs to tell prompt from answer tokens; use a template that renders "
            "each turn after the previous ones (ChatML, the tokenizer stage's default, does)."
        ) from None
    tok = _tokenizer(tokenizer.tokenizer_json)
    special = {i for i, added in tok.get_added_tokens_decoder().items() if added.special}
    ids = tok.encode(suffix, add_special_tokens=False).ids
    return tuple(dict.fromkeys(i for i in ids if i in special and i != tokenizer.eos_id))


def train(
    ctx: StageContext,
    spec: PostTrainStage,
    base: Base,
    source: ModelSource,
    objective: Objective,
    data: chat_datasets.Prepared,
    started: float,
) -> dict[str, Any]:
    """Fit on Ray Train and return the marker metrics: training results plus the data accounting."""
    job = for_stage(ctx.name, spec, source, objective, ctx, tokenizer_uri=base.model_uri)
    ctx.log(
        "%s: %d train / %d val examples (%d dropped: %s, %d truncated); %d steps on %d worker(s), ZeRO-%d, %s",
        objective.name, data.rows["train"], data.rows["val"], data.rows["dropped"], data.dropped or "none",
        data.rows["truncated"], spec.schedule.steps, spec.scaling.num_workers, job.zero_stage, job.precision,
    )  # fmt: skip
    result = launch.fit(job, data.datasets, spec.scaling, spec.failure, ctx.path(STATE_DIR))
    copy_tree(job.tensorboard_uri, ctx.path("tensorboard"))
    metrics = result.return_value or result.metrics
    return {
        **metrics,
        **data.report(),
        "base_model": base.model_uri,
        "model": ctx.path("model"),
        "wall_s": round(time.time() - started, 3),
    }

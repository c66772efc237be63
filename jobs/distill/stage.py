"""The `distill` stage runner: a student learns from a teacher on the shared training core.

white_box: the student's chat data is encoded by the SFT batch builder; a frozen teacher on every training worker
scores the same tokens and `Distillation` mixes the KL to it with the hard-label loss. black_box: the teacher first
answers the data's prompts (teacher_data/), then the student is fine-tuned on those answers. Either way an
optional reasoning format adds tag weights to the rows. Writes `model/`, `tensorboard/` and `_state/` like sft.
"""

from __future__ import annotations

import re
import time
from typing import Any

from jobs.context import StageContext
from jobs.distill import tags, teacher
from jobs.distill.objective import Distillation, WeightedLM
from jobs.train import chat_datasets, post
from jobs.train.model import ModelSource
from jobs.train.objectives import Objective
from jobs.train.sources import tokenizer_info
from pipelines.spec.distill import DistillStage

R1_FORMAT = re.compile(r"^\s*<think>.*</think>\s*<answer>.*</answer>\s*$", re.DOTALL)


def run(ctx: StageContext) -> dict[str, Any]:
    started = time.time()
    spec: DistillStage = ctx.spec
    base = post.resolve(ctx, spec)
    teacher_uri = teacher.teacher_uri(ctx, spec)
    if spec.mode == "white_box":
        files, objective, extra = white_box(ctx, spec, base, teacher_uri)
    else:
        files, objective, extra = black_box(ctx, spec, base, teacher_uri)
    transform = tags.weighting(base.settings.tokenizer_json, spec.reasoning)
    data = chat_datasets.prepare(files, base.settings, "sft", f"stages.{ctx.name}.data", transform=transform)
    metrics = post.train(ctx, spec, base, base.source(), objective, data, started)
    return {**metrics, **extra, "mode": spec.mode, "teacher": teacher_uri}


def white_box(
    ctx: StageContext, spec: DistillStage, base: post.Base, teacher_uri: str
) -> tuple[list[str], Objective, dict[str, Any]]:
    field = f"stages.{ctx.name}.teacher"
    teacher.check_same_vocabulary(base.tokenizer, tokenizer_info(teacher_uri, field), field)
    post.check_positions(teacher_uri, spec, ctx.name)
    objective = Distillation(
        teacher=ModelSource(pretrained_uri=teacher_uri, pad_token_id=base.settings.pad_id),
        vocab=base.tokenizer.vocab_size,
        temperature=spec.temperature,
        alpha=spec.alpha,
        seed=spec.schedule.seed,
    )
    ctx.log("white-box distillation from %s: T=%g, alpha=%g", teacher_uri, spec.temperature, spec.alpha)
    return base.files, objective, {}


def black_box(
    ctx: StageContext, spec: DistillStage, base: post.Base, teacher_uri: str
) -> tuple[list[str], Objective, dict[str, Any]]:
    ctx.log("black-box distillation: %s answers the prompts of %d file(s)", teacher_uri, len(base.files))
    records = chat_datasets.read_records(base.files)
    files, metrics = teacher.generate_answers(records, teacher_uri, spec, ctx.path("teacher_data"))
    if spec.reasoning is not None:
        metrics["teacher_format_rate"] = format_rate(files)
    ctx.progress(**metrics)
    return files, WeightedLM(), metrics


def format_rate(files: list[str]) -> float:
    """Share of the teacher's answers in the <think>…</think><answer>…</answer> format."""
    import json

    from pipelines import storage

    answers = [
        json.loads(line)["conversations"][-1]["content"]
        for f in files
        for line in storage.read_text(f).splitlines()
        if line.strip()
    ]
    return round(sum(bool(R1_FORMAT.match(a)) for a in answers) / max(1, len(answers)), 4)

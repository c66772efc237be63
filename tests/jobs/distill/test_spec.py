"""The distill spec: defaults, the rules with their messages, cross-stage checks, the example; the teacher checks
the runner makes before any training (vocabulary, model kind) and the black-box prompts and generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from jobs.context import StageContext, StageOutput
from jobs.train.chat_data import Drop
from pipelines import load
from pipelines.errors import SpecError, StageError
from pipelines.spec import Pipeline
from pipelines.spec.distill import DistillStage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BASE = {"kind": "distill", "model": "student", "teacher": "teacher", "data": "./chat.jsonl"}
WARM = {"optim": {"warmup_steps": 1}, "schedule": {"steps": 10}}


def distill(**fields) -> DistillStage:
    return DistillStage.model_validate({**BASE, **WARM, **fields})


def test_defaults_and_references():
    spec = distill()
    assert (spec.mode, spec.temperature, spec.alpha, spec.reasoning) == ("white_box", 2.0, 0.5, None)
    assert spec.references({"student", "teacher", "curate"}) == {"model": "student", "teacher": "teacher"}
    reasoning = distill(reasoning={}).reasoning
    assert reasoning.tag_weight == 10.0 and reasoning.tags == ["<think>", "</think>", "<answer>", "</answer>"]
    assert distill(mode="black_box", generation={"max_new_tokens": 64}).generation.temperature == 0.0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "black_box", "temperature": 3.0}, "temperature only apply to mode: white_box (black_box fine-tunes "
         "on the teacher's generated text with the plain SFT loss); remove temperature or set mode: white_box"),
        ({"mode": "black_box", "temperature": 3.0, "alpha": 0.2}, "temperature and alpha only apply to mode: "
         "white_box"),
        ({"generation": {"max_new_tokens": 8}}, "generation only applies to mode: black_box (white_box reads the "
         "teacher's logits on the data and generates nothing); remove generation or set mode: black_box"),
        ({"teacher": "student"}, "teacher and model are both 'student': a model distilled from itself learns "
         "nothing new; name a different (usually larger) teacher"),
        ({"alpha": 0}, "alpha\n  Input should be greater than 0"),
        ({"alpha": 1.5}, "less than or equal to 1"),
        ({"temperature": 0}, "temperature\n  Input should be greater than 0"),
        ({"reasoning": {"tag_weight": 0.5}}, "tag_weight\n  Input should be greater than or equal to 1"),
        ({"data_format": "preference"}, "data_format 'preference' is not accepted here; use one of auto, "
         "conversations, alpaca"),
        ({"mode": "grey_box"}, "Input should be 'white_box' or 'black_box'"),
        ({"teachr": "x"}, "teachr\n  Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_rules_and_their_messages(fields, message):
    with pytest.raises(ValidationError) as err:
        distill(**fields)
    assert message in str(err.value)


def pipeline(teacher_kind: str) -> dict:
    teacher = {"kind": teacher_kind, "model": "/m", "data": "/d", **WARM}
    if teacher_kind == "serve":
        teacher = {"kind": "serve", "model": "/m", "autoscaling": {"target_ongoing_requests": 2}}
    return {"name": "d", "stages": {"teacher": teacher, "distill": {**BASE, "model": "/student", **WARM}}}


def test_the_teacher_stage_must_export_a_causal_lm():
    assert Pipeline.model_validate(pipeline("sft")).stages["distill"].teacher == "teacher"
    with pytest.raises(ValidationError) as err:
        Pipeline.model_validate(pipeline("reward_model"))
    expected = (
        "stages.distill.teacher: 'teacher' is a reward_model stage, which exports no causal language model; name a "
        "pretrain, sft, dpo, grpo, ppo or distill stage, or a Hugging Face model directory"
    )
    assert expected in str(err.value)


def test_the_teacher_must_come_first(tmp_path):
    from pipelines import plan

    spec = {"name": "d", "stages": {"distill": {**BASE, "model": "/s", **WARM}, "teacher": pipeline("sft")["stages"]
            ["teacher"]}}  # fmt: skip
    with pytest.raises(SpecError, match="stages.distill.teacher: refers to 'teacher', which comes later in the file"):
        plan.check_references(Pipeline.model_validate(spec))


def test_example_validates_and_imports_stay_light():
    spec = load.load(os.path.join(ROOT, "pipelines", "examples", "distill.yaml"))
    stage = spec.stages["distill"]
    assert (stage.kind, stage.model, stage.teacher, stage.mode) == ("distill", "student", "teacher_sft", "white_box")
    code = ("import sys, cli.main; from pipelines import load; load.load('pipelines/examples/distill.yaml'); "
            "print(sorted(m for m in ('torch', 'deepspeed', 'vllm', 'ray.train') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_distill_code_is_in_its_cache_key():
    from pipelines.code import PROJECT

    closure = PROJECT.closure("jobs.distill.stage")
    assert "jobs/distill/teacher.py" in closure and "jobs/train/loop.py" in closure


# --- what the runner checks about the teacher ---------------------------------------------------------------


def context(spec: DistillStage, tmp_path, inputs: dict | None = None) -> StageContext:
    return StageContext("distill", "distill", spec, "t", "r", "k", str(tmp_path / "out"), inputs or {})


def test_a_teacher_with_another_vocabulary_is_refused_for_white_box(base_model_dir, tmp_path):
    from jobs.distill.teacher import check_same_vocabulary
    from jobs.train.sources import tokenizer_info
    from tests.services.tiny_model import build_tokenizer

    other = tmp_path / "other-tokenizer"
    build_tokenizer(str(other), vocab_size=300)
    student, teacher = tokenizer_info(base_model_dir, "model"), tokenizer_info(str(other), "teacher")
    check_same_vocabulary(student, student, "stages.distill.teacher")
    with pytest.raises(StageError) as err:
        check_same_vocabulary(student, teacher, "stages.distill.teacher")
    message = str(err.value)
    assert message.startswith(f"stages.distill.teacher: the teacher's tokenizer ({other}, 300 tokens) differs from "
                              f"the student's ({base_model_dir}, ")  # fmt: skip
    assert "token ids (teacher vs student: " in message
    assert message.endswith("start the student from a model trained with the teacher's tokenizer, or set mode: "
                            "black_box, which learns from the teacher's text.")  # fmt: skip


def test_the_teacher_must_be_a_causal_lm_directory(tmp_path):
    from jobs.distill.teacher import teacher_uri

    spec = distill(model="/student", teacher=str(tmp_path / "nowhere"))
    with pytest.raises(StageError, match=rf"stages.distill.teacher: '{tmp_path}/nowhere' is not a Hugging Face model "
                       r"directory \(no config.json\)"):  # fmt: skip
        teacher_uri(context(spec, tmp_path), spec)
    rm = tmp_path / "rm" / "model"
    rm.mkdir(parents=True)
    (rm / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    spec = distill(model="/student")
    ctx = context(spec, tmp_path, {"teacher": StageOutput("teacher", "reward_model", str(tmp_path / "rm"), {})})
    with pytest.raises(StageError, match="stages.distill.teacher: the model at .* is a LlamaForSequenceClassification, "
                       "not a causal language model"):  # fmt: skip
        teacher_uri(ctx, spec)


# --- black box: prompts and the teacher's answers ------------------------------------------------------------


def test_prompts_are_the_turns_before_the_first_answer():
    from jobs.distill.teacher import prompt_messages

    user = {"role": "user", "content": "Hi?"}
    conversation = {"conversations": [user, {"role": "assistant", "content": "old"}, {"role": "user", "content": "x"}]}
    assert prompt_messages(conversation, None) == [user]
    assert prompt_messages({"prompt": "Hi?"}, "Be brief.") == [{"role": "system", "content": "Be brief."}, user]
    assert prompt_messages({"instruction": "Add", "input": "2 2", "output": "4"}, None) == [
        {"role": "user", "content": "Add\n\n2 2"}
    ]
    for record, reason in (({"text": "x"}, "unknown_format"), ({"messages": [{"role": "assistant", "content": "a"}]},
                           "no_prompt"), ({"prompt": " "}, "no_prompt")):  # fmt: skip
        with pytest.raises(Drop, match=reason):
            prompt_messages(record, None)


def test_the_teacher_answers_each_usable_prompt(teacher_dir):
    from jobs.distill.teacher import TeacherGenerator
    from pipelines.spec.distill import TeacherGeneration

    generator = TeacherGenerator(teacher_dir, TeacherGeneration(max_new_tokens=6), system=None, use_gpu=False)
    lines = [json.dumps({"prompt": "Where is the cat?"}), "not json",
             json.dumps({"messages": [{"role": "user", "content": "Name a colour."}]})]  # fmt: skip
    out = generator({"record": np.array(lines, dtype=object)})["record"]
    records = [json.loads(r) for r in out]
    assert [r["conversations"][0]["content"] for r in records] == ["Where is the cat?", "Name a colour."]
    assert all(r["conversations"][-1]["role"] == "assistant" for r in records)
    again = [json.loads(r) for r in generator({"record": np.array(lines, dtype=object)})["record"]]
    assert again == records  # temperature 0: greedy, the same answers every time

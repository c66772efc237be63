"""Pretraining spec: defaults, presets and the cross-field rules with their messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipelines.spec import Pipeline
from pipelines.spec.train import DeepSpeedConfig, ModelConfig, OptimConfig, PretrainStage
from tests.conftest import import_in_fresh_process

BASE = {"kind": "pretrain", "data": "curate", "tokenizer": "tok"}


def stage(**fields) -> PretrainStage:
    return PretrainStage(**{**BASE, **fields})


def test_defaults_resolve_to_fp32_on_cpu_and_bf16_on_gpu():
    spec = stage(optim={"warmup_steps": 10})
    assert spec.deepspeed.resolved_precision(use_gpu=False) == "fp32"
    assert spec.deepspeed.resolved_precision(use_gpu=True) == "bf16"
    assert spec.references({"curate", "tok"}) == {"data": "curate", "tokenizer": "tok"}
    assert spec.references({"curate"}) == {"data": "curate"}  # a tokenizer path is not a stage


def test_preset_dims_with_overrides():
    assert ModelConfig(preset="1b").dims()["num_kv_heads"] == 8
    dims = ModelConfig(preset="125m", num_layers=4).dims()
    assert (dims["hidden_size"], dims["num_layers"]) == (768, 4)


def test_explicit_dims_need_all_fields():
    with pytest.raises(ValidationError, match="missing: num_heads, num_kv_heads, intermediate_size"):
        ModelConfig(preset=None, hidden_size=128, num_layers=2)


def test_heads_must_divide_hidden_with_a_suggestion():
    with pytest.raises(ValidationError, match=r"num_heads \(5\) must divide model.hidden_size \(64\).*such as 4"):
        ModelConfig(preset="tiny", num_heads=5, num_kv_heads=1)
    with pytest.raises(ValidationError, match=r"num_kv_heads \(3\) must divide model.num_heads \(4\)"):
        ModelConfig(preset="tiny", num_heads=4, num_kv_heads=3)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_on_cpu_is_refused_with_the_fix(precision):
    with pytest.raises(ValidationError, match=rf"precision '{precision}' needs GPUs.*scaling.use_gpu: true"):
        stage(deepspeed={"precision": precision}, optim={"warmup_steps": 1})
    assert stage(deepspeed={"precision": precision}, optim={"warmup_steps": 1}, scaling={"use_gpu": True})


def test_offload_rules():
    with pytest.raises(ValidationError, match=r"offload_params needs zero_stage 3 \(got 2\)"):
        DeepSpeedConfig(zero_stage=2, offload_params=True)
    with pytest.raises(ValidationError, match=r"offload_optimizer needs zero_stage >= 1 \(got 0\)"):
        DeepSpeedConfig(zero_stage=0, offload_optimizer=True)
    assert DeepSpeedConfig(zero_stage=3, offload_params=True, offload_optimizer=True)


def test_schedule_rules():
    with pytest.raises(ValidationError, match=r"warmup_steps \(100\) must be below schedule.steps \(50\)"):
        stage(schedule={"steps": 50})
    with pytest.raises(ValidationError, match=r"max_position_embeddings \(128\) is shorter than schedule.seq_len"):
        stage(model={"max_position_embeddings": 128}, schedule={"seq_len": 256}, optim={"warmup_steps": 1})
    with pytest.raises(ValidationError, match=r"min_lr \(0.1\) is above optim.lr"):
        OptimConfig(lr=0.01, min_lr=0.1)


def test_unknown_keys_are_errors():
    with pytest.raises(ValidationError, match="zero_stag"):
        DeepSpeedConfig(zero_stag=2)
    with pytest.raises(ValidationError, match="less than or equal to 3"):
        DeepSpeedConfig(zero_stage=4)


def test_every_field_has_a_description():
    schema = Pipeline.model_json_schema()
    for name, definition in schema["$defs"].items():
        if name in {"TokenizerStage", "PretrainStage", "ModelConfig", "DeepSpeedConfig", "OptimConfig",
                    "ScheduleConfig", "FailureConfig"}:  # fmt: skip
            for field, prop in definition["properties"].items():
                assert prop.get("description"), f"{name}.{field} has no description"


def test_spec_import_is_light():
    modules = "pipelines.spec, jobs.train.pretrain, jobs.tokenizer"
    heavy = ('torch', 'deepspeed', 'ray.train', 'transformers')
    proc = import_in_fresh_process(modules, heavy)
    assert proc.returncode == 0, proc.stderr

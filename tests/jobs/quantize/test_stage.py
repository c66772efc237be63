"""The quantize stage's checks on the driver: bad inputs stop with one message naming the field, before any task is
scheduled (the stage end to end, served and evaluated, is tests/services/test_quantized.py)."""

from __future__ import annotations

import json

import pytest

from jobs.context import StageContext, StageOutput
from jobs.quantize import stage
from pipelines.errors import StageError
from pipelines.spec.quantize import QuantizeStage


def context(spec: QuantizeStage, out: str, inputs: dict[str, StageOutput] | None = None) -> StageContext:
    return StageContext("quant", "quantize", spec, "t", "r", "k", out, inputs or {})


def w8a8(model: str, data: str, **calibration) -> QuantizeStage:
    return QuantizeStage(kind="quantize", model=model, scheme="w8a8-int8",
                         calibration={"data": data, "samples": 32, "seq_len": 128, **calibration})  # fmt: skip


def test_calibration_without_text_is_refused_before_anything_runs(base_model_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"id": 1}\n{"text": ""}\nnot json\n')
    with pytest.raises(StageError) as info:
        stage.run(context(w8a8(base_model_dir, str(empty)), str(tmp_path / "out")))
    assert str(info.value) == (
        f"stages.quant.calibration.data: none of the 3 rows in '{empty}' holds text to calibrate on: a row needs a "
        "non-empty 'text' string (set calibration.text_column to the column that has it) or a chat conversation "
        "(messages, or instruction and output)"
    )


def test_a_model_that_is_not_a_causal_lm_is_refused(chat_dir, tmp_path):
    classifier = tmp_path / "reward"
    classifier.mkdir()
    (classifier / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(StageError, match=r"^stages.quant.model: the model at '.*reward' is a "
                                         r"LlamaForSequenceClassification, not a causal language model"):  # fmt: skip
        stage.run(context(w8a8(str(classifier), f"{chat_dir}/sft.jsonl"), str(tmp_path / "out")))


def test_w4a16_needs_layer_widths_in_groups_of_128(base_model_dir, chat_dir, tmp_path):
    spec = QuantizeStage(kind="quantize", model=base_model_dir, scheme="w4a16",
                         calibration={"data": f"{chat_dir}/sft.jsonl"})  # fmt: skip
    with pytest.raises(StageError) as info:
        stage.run(context(spec, str(tmp_path / "out")))
    assert str(info.value) == (
        f"stages.quant.scheme: w4a16 quantizes weights in groups of 128 inputs, but the model at '{base_model_dir}' "
        "has hidden_size 64, intermediate_size 176, not a multiple of 128; choose w8a8-int8 for this model"
    )

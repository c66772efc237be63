"""The quantize stage end to end on the session Ray cluster: the tiny chat model quantized to w8a8-int8 with
llm-compressor (from its own libraries), served by vLLM on CPU beside the session's app, asked through the official
`openai` client, and compared with its source in one eval table. Bad inputs stop with one message naming the field."""

from __future__ import annotations

import json
import os

import openai
import pytest

from jobs.context import StageContext, StageOutput
from jobs.quantize import stage
from pipelines.errors import StageError
from pipelines.spec.quantize import QuantizeStage

PROMPTS = ["What is the opposite of warm?", "Where does Anna live?"]


def context(spec: QuantizeStage, out: str, inputs: dict[str, StageOutput] | None = None) -> StageContext:
    return StageContext("quant", "quantize", spec, "t", "r", "k", out, inputs or {})


def w8a8(model: str, data: str, **calibration) -> QuantizeStage:
    return QuantizeStage(kind="quantize", model=model, scheme="w8a8-int8",
                         calibration={"data": data, "samples": 32, "seq_len": 128, **calibration})  # fmt: skip


@pytest.mark.slow
@pytest.mark.cluster
def test_w8a8_model_is_served_by_vllm_and_compared_with_its_source(
    ray_session, served_app, base_model_dir, chat_dir, tmp_path
):
    from jobs.eval import stage as eval_stage
    from pipelines.spec.eval import EvalStage
    from services import lifecycle
    from services import stage as serve_stage
    from tests.services.conftest import API_KEY, serve_spec, stage_context

    out = str(tmp_path / "quant")
    metrics = stage.run(context(w8a8(base_model_dir, f"{chat_dir}/sft.jsonl"), out))
    json.dumps(metrics)  # it becomes the _SUCCESS marker
    assert metrics["samples"] == 32 and metrics["scheme"] == "w8a8-int8"
    assert metrics["quantized_bytes"] < metrics["source_bytes"] and metrics["quantize_s"] > 0
    model_dir = os.path.join(out, "model")
    config = json.load(open(os.path.join(model_dir, "config.json")))["quantization_config"]
    assert (config["quant_method"], config["format"], config["ignore"]) == ("compressed-tensors", "int-quantized",
                                                                            ["lm_head"])  # fmt: skip
    weights = config["config_groups"]["group_0"]
    assert weights["weights"]["num_bits"] == 8 and weights["input_activations"]["dynamic"] is True
    assert {"tokenizer.json", "chat_template.jinja"} <= set(os.listdir(model_dir)), "served with its chat template"

    name = "tiny-int8"
    spec = {**serve_spec("pretrain", served_app.port), "name": name,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 2}}  # fmt: skip
    try:
        served = serve_stage.run(stage_context(str(tmp_path / "serve"), spec, out, pipeline="quantized"))
        client = openai.OpenAI(base_url=served["endpoint"], api_key=API_KEY, max_retries=0, timeout=120)
        reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": PROMPTS[0]}],
                                               max_tokens=8, temperature=0)  # fmt: skip
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    finally:
        if name in lifecycle.records():
            lifecycle.down(name)

    table = eval_stage.run(StageContext("eval", "eval", EvalStage(
        kind="eval", models=[base_model_dir, model_dir], multiple_choice=f"{chat_dir}/mc.jsonl", prompts=PROMPTS,
        max_new_tokens=6, batch_size=8), "t", "r", "k", str(tmp_path / "eval")))  # fmt: skip
    source, quantized = os.path.basename(base_model_dir), "model"
    assert list(table["models"]) == [source, quantized]
    assert all(0 <= row["mc_accuracy"] <= 1 for row in table["models"].values())
    results = open(os.path.join(tmp_path, "eval", "results.md")).read()
    assert f"| {source} |" in results and f"| {quantized} |" in results


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

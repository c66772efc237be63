"""The quantize stage end to end on the session Ray cluster: the tiny chat model quantized to w8a8-int8 with
llm-compressor (from its own libraries), served by vLLM on CPU beside the session's app, asked through the official
`openai` client, and compared with its source in one eval table."""

from __future__ import annotations

import json
import os

import openai
import pytest

from jobs.context import StageContext
from jobs.quantize import stage
from pipelines.spec.quantize import QuantizeStage

PROMPTS = ["What is the opposite of warm?", "Where does Anna live?"]


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
    spec = QuantizeStage(kind="quantize", model=base_model_dir, scheme="w8a8-int8",
                         calibration={"data": f"{chat_dir}/sft.jsonl", "samples": 32, "seq_len": 128})  # fmt: skip
    metrics = stage.run(StageContext("quant", "quantize", spec, "t", "r", "k", out))
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
    spec = serve_spec("pretrain", served_app.port)
    spec.update(name=name, autoscaling={"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 2},
                engine={**spec["engine"], "max_model_len": 128})  # the tiny preset's context  # fmt: skip
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

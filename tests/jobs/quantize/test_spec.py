"""The quantize spec: its rules and messages at plan time (nothing is submitted), references, and the serve stage's
refusal of a scheme its replicas' device cannot run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli.main import main
from pipelines import load, plan
from pipelines.errors import SpecError
from pipelines.spec import Pipeline
from pipelines.spec.quantize import QuantizeStage
from tests.conftest import ROOT


def pipeline(**quantize_fields) -> dict:
    return {"name": "p", "stages": {
        "curate": {"kind": "data", "inputs": ["./corpus.jsonl"]},
        "tok": {"kind": "tokenizer", "data": "curate"},
        "pretrain": {"kind": "pretrain", "data": "curate", "tokenizer": "tok"},
        "quant": {"kind": "quantize", "model": "pretrain", "scheme": "w8a8-int8", "calibration": {"data": "curate"},
                  **quantize_fields},
    }}  # fmt: skip


def test_defaults_and_references():
    spec = QuantizeStage(kind="quantize", model="pretrain", scheme="w4a16", calibration={"data": "curate"})
    assert (spec.calibration.samples, spec.calibration.seq_len, spec.ignore, spec.use_gpu) == (512, 2048, ["lm_head"],
                                                                                               False)  # fmt: skip
    assert spec.references({"pretrain", "curate"}) == {"model": "pretrain", "calibration.data": "curate"}
    built = {s.name: s for s in plan.build(load.validate(pipeline()), check_inputs=False).stages}["quant"]
    assert set(built.inputs) == {"pretrain", "curate"}, "the key follows the model and the calibration text"
    assert QuantizeStage(kind="quantize", model="m", scheme="fp8-dynamic", use_gpu=True).calibration is None


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"scheme": "int3"}, "stages.quant.scheme: Input should be 'w8a8-int8', 'w4a16' or 'fp8-dynamic' (got 'int3')"),
        ({"scheme": "fp8-dynamic"}, "stages.quant: scheme: fp8-dynamic makes FP8 weights, which only GPUs compute "
         "with (vLLM's CPU backend has no FP8 kernels); set use_gpu: true on a GPU cluster, or choose w8a8-int8 or "
         "w4a16 for CPU"),
        ({"calibration": None}, "stages.quant: calibration: scheme w8a8-int8 calibrates on sample text; set "
         "calibration: {data: <a data stage, or a chat or text .jsonl file>}"),
        ({"model": "tok"}, "stages.quant.model: 'tok' is a tokenizer stage, which exports no causal language model; "
         "name a pretrain, sft, dpo, grpo, ppo or distill stage, or a Hugging Face model directory"),
        ({"calibration": {"data": "pretrain"}}, "stages.quant.calibration.data: 'pretrain' is a pretrain stage, which "
         "exports no text; name a data stage, or a chat or text .jsonl file"),
    ],
)
def test_bad_input_is_one_message_naming_the_field(fields, message):
    with pytest.raises(SpecError) as info:
        load.validate(pipeline(**fields))
    assert message in str(info.value)


def test_the_cli_refuses_fp8_on_cpu_before_submitting(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\nstages:\n  quant: {kind: quantize, model: ./hf, scheme: fp8-dynamic}\n"
    )
    result = CliRunner().invoke(main, ["submit", str(path), "--address", "http://127.0.0.1:1"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "stages.quant: scheme: fp8-dynamic makes FP8 weights, which only GPUs compute with" in result.output


def test_serve_refuses_a_scheme_its_replicas_cannot_run():
    raw = pipeline(scheme="fp8-dynamic", use_gpu=True, calibration=None)
    raw["stages"]["serve"] = {"kind": "serve", "model": "quant", "autoscaling": {"target_ongoing_requests": 2}}
    with pytest.raises(SpecError) as info:
        load.validate(raw)
    refused = ("stages.serve.model: 'quant' quantizes to fp8-dynamic, which vLLM runs on GPUs only; set "
               "stages.serve.placement.use_gpu: true, or quantize to w8a8-int8 or w4a16 for CPU replicas")
    assert refused in str(info.value)
    raw["stages"]["serve"]["placement"] = {"use_gpu": True}
    assert load.validate(raw).stages["serve"].model == "quant"


def test_every_quantize_field_has_a_description():
    schema = Pipeline.model_json_schema()["$defs"]
    for model in ("QuantizeStage", "Calibration"):
        for field, prop in schema[model]["properties"].items():
            assert prop.get("description"), f"{model}.{field} has no description"


def test_quantize_runner_import_is_light():
    code = (
        "import sys, pipelines.spec, jobs.registry, jobs.quantize.stage;"
        "heavy = [m for m in ('torch', 'transformers', 'ray.data', 'deepspeed', 'vllm', 'llmcompressor') "
        "if m in sys.modules];"
        "sys.exit(repr(heavy) if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

"""The quantize spec: its rules and messages at plan time (nothing is submitted), references, and the serve stage's
refusal of a scheme its replicas' device cannot run."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import main
from pipelines import load, plan
from pipelines.errors import SpecError
from pipelines.spec import Pipeline
from pipelines.spec.quantize import QuantizeStage
from tests.conftest import ROOT, import_in_fresh_process


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
    modules = "pipelines.spec, jobs.registry, jobs.quantize.stage"
    heavy = ('torch', 'transformers', 'ray.data', 'deepspeed', 'vllm', 'llmcompressor')
    proc = import_in_fresh_process(modules, heavy)
    assert proc.returncode == 0, proc.stderr


def test_example_is_the_tiny_pipeline_plus_quantization_and_shares_its_cache_keys():
    """After `make run`, submitting the example runs only its own three stages: the others are tiny.yaml's."""
    examples = f"{ROOT}/pipelines/examples"
    tiny = plan.build(load.load(f"{examples}/tiny.yaml"), check_inputs=False)
    spec = load.load(f"{examples}/quantize.yaml")
    keys = {s.name: s.cache_key for s in plan.build(spec, check_inputs=False).stages}
    assert {s.name: s.cache_key for s in tiny.stages}.items() <= keys.items()
    added = {name: stage for name, stage in spec.stages.items() if name not in {s.name for s in tiny.stages}}
    assert {name: stage.kind for name, stage in added.items()} == {"quant": "quantize", "serve-int8": "serve",
                                                                   "eval-int8": "eval"}  # fmt: skip
    assert (added["quant"].model, added["quant"].scheme) == ("align", "w8a8-int8")
    assert added["serve-int8"].model == "quant" and added["eval-int8"].models == ["align", "quant"]


def test_plan_sizes_the_quantize_task_and_the_smaller_weights_it_serves():
    from pipelines.capacity.estimate import GIB, estimate_pipeline
    from pipelines.capacity.models import shape_of

    raw = pipeline(use_gpu=True, calibration={"data": "curate", "samples": 64, "seq_len": 512})
    raw["stages"]["pretrain"]["model"] = {"preset": "1b"}
    serve = {"kind": "serve", "autoscaling": {"target_ongoing_requests": 2}}
    raw["stages"].update({"serve": {**serve, "model": "pretrain"}, "serve-int8": {**serve, "model": "quant"},
                          "quant4": {**raw["stages"]["quant"], "scheme": "w4a16"},
                          "serve-int4": {**serve, "model": "quant4"}})  # fmt: skip
    stages = load.validate(raw).stages
    est, shape = estimate_pipeline(stages, None), shape_of(stages, "pretrain")
    assert (shape.hidden, shape.intermediate, shape.layers) == (2048, 8192, 16)
    linear = 16 * (shape.layer_params - 2 * 2048)
    assert est["serve"].vllm_gib == pytest.approx(shape.params * 2 / GIB)
    assert est["serve-int8"].vllm_gib == pytest.approx((linear * 1 + (shape.params - linear) * 2) / GIB)
    assert est["serve-int4"].vllm_gib < est["serve-int8"].vllm_gib < 0.6 * est["serve"].vllm_gib
    quant = est["quant"]
    assert (quant.gpus, quant.model_states_gib) == (1, pytest.approx(shape.params * 2 / GIB))
    hessians, activations = (6 * 2048**2 + 8192**2) * 4, 2 * 64 * 512 * 2048 * 4
    assert quant.activations_gib == pytest.approx((hessians + activations) / GIB)

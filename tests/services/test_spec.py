"""The serve stage spec: required autoscaling target, secrets kept out, cross-field rules, import-lightness."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import BaseModel, ValidationError

from pipelines.spec import Pipeline
from pipelines.spec.serve import ServeStage

AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4}


def stage(**fields) -> ServeStage:
    return ServeStage.model_validate({"kind": "serve", "model": "sft", "autoscaling": AUTOSCALING, **fields})


def error(**fields) -> str:
    with pytest.raises(ValidationError) as info:
        ServeStage.model_validate({"kind": "serve", "model": "sft", **fields})
    return str(info.value)


def test_defaults_are_a_small_cpu_app():
    s = stage()
    assert s.name is None and not s.placement.use_gpu and s.max_surge_percent == 100
    assert s.references({"sft", "data"}) == {"model": "sft"}
    assert s.engine.gpu_memory_utilization is None  # resolved by device in services.app


@pytest.mark.parametrize(
    "fields",
    [{}, {"autoscaling": None}, {"autoscaling": {"min_replicas": 1, "max_replicas": 3}}],
)
def test_target_ongoing_requests_is_required_and_says_why(fields):
    message = error(**fields)
    assert "autoscaling.target_ongoing_requests is required" in message
    assert "Serve LLM's own default (1e9) never scales up" in message


def test_autoscaling_bounds():
    assert "min_replicas (3) is above max_replicas (2)" in error(autoscaling={**AUTOSCALING, "min_replicas": 3})
    bad_initial = {**AUTOSCALING, "initial_replicas": 5}
    assert "initial_replicas (5) must lie between min_replicas (1) and max_replicas (2)" in error(
        autoscaling=bad_initial
    )


def test_plain_api_keys_are_refused_and_digests_accepted():
    assert "api_keys[0] is not a 'sha256:<64 hex digits>' digest" in error(
        autoscaling=AUTOSCALING, api_keys=["hunter2"]
    )
    assert stage(api_keys=["sha256:" + "ab" * 32]).api_keys == ["sha256:" + "ab" * 32]


def test_api_key_env_takes_a_name_or_a_list():
    assert stage(api_key_env="LLMCTL_API_KEY").api_key_env == ["LLMCTL_API_KEY"]
    assert "is not an environment variable name" in error(autoscaling=AUTOSCALING, api_key_env=["sk-live-123"])


def test_engine_kwargs_cannot_shadow_typed_fields():
    message = error(autoscaling=AUTOSCALING, engine={"kwargs": {"max_model_len": 4096}})
    assert "engine.kwargs.max_model_len is not allowed here; set engine.max_model_len instead" in message
    assert stage(engine={"kwargs": {"max_num_seqs": 8}}).engine.kwargs == {"max_num_seqs": 8}


def test_gpu_only_settings_need_use_gpu():
    assert "needs placement.use_gpu: true" in error(autoscaling=AUTOSCALING, placement={"accelerator_type": "A10G"})
    assert "needs placement.use_gpu: true" in error(autoscaling=AUTOSCALING, engine={"tensor_parallel_size": 2})
    assert stage(placement={"use_gpu": True, "accelerator_type": "A10G"}).placement.accelerator_type == "A10G"


def test_unknown_keys_and_bad_names_are_errors():
    assert "Extra inputs are not permitted" in error(autoscaling=AUTOSCALING, replicas=2)
    assert "String should match pattern" in error(autoscaling=AUTOSCALING, name="my app")


def test_every_field_has_a_description():
    def walk(model: type[BaseModel]) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                missing += walk(annotation)
        return missing

    assert walk(ServeStage) == []
    schema = Pipeline.model_json_schema()
    assert "target_ongoing_requests" in schema["$defs"]["Autoscaling"]["required"]


def test_importing_the_spec_stays_light():
    code = "import sys, pipelines.spec; print(sorted(m for m in ('ray', 'vllm', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_each_app_has_its_own_route_and_the_gateways_are_refused():
    assert stage().http.prefix("tiny") == "/tiny" and stage(http={"route_prefix": "/chat/"}).http.prefix("x") == "/chat"
    for prefix in ("/", "/v1", "/v1/models"):
        message = error(autoscaling=AUTOSCALING, http={"route_prefix": prefix})
        assert f"route_prefix '{prefix}' belongs to the cluster's model gateway" in message
        assert "Leave route_prefix unset (the app answers at /<name>/v1)" in message
    assert "must start with '/'" in error(autoscaling=AUTOSCALING, http={"route_prefix": "chat"})
    assert "name 'llmctl-gateway' is the cluster's model gateway" in error(autoscaling=AUTOSCALING,
                                                                          name="llmctl-gateway")

"""How a serve spec becomes a Serve LLM application: engine, placement, versions, rescaling, status summaries."""

from __future__ import annotations

import json

import pytest

from pipelines.errors import ClusterError, SpecError, StageError
from pipelines.spec.serve import ServeStage
from services import app, lifecycle
from services.app import Adapter, AppRecord
from services.auth import Guard
from services.client import usage
from tests.services.conftest import taken_port_message


def record(**fields) -> AppRecord:
    spec = {"kind": "serve", "model": "sft", "autoscaling": {"max_replicas": 2, "target_ongoing_requests": 4}}
    stage = ServeStage.model_validate({**spec, **fields})
    return AppRecord(stage=stage, name="chat", model_source="/models/chat", model_fingerprint="f1")


def test_engine_kwargs_default_memory_by_device():
    cpu = app.engine_kwargs(record().stage)
    assert cpu == {"dtype": "auto", "enforce_eager": False, "tensor_parallel_size": 1, "gpu_memory_utilization": 0.2,
                   "override_generation_config": {"max_new_tokens": 1024}}  # fmt: skip
    gpu = app.engine_kwargs(record(placement={"use_gpu": True}, engine={"max_model_len": 2048}).stage)
    assert gpu["gpu_memory_utilization"] == 0.9 and gpu["max_model_len"] == 2048
    exact = app.engine_kwargs(record(engine={"kv_cache_bytes": 1 << 26, "kwargs": {"max_num_seqs": 8}}).stage)
    assert exact["kv_cache_memory_bytes"] == 1 << 26 and exact["max_num_seqs"] == 8


def test_engine_metrics_choose_the_stat_logger(tiny_model_dir):
    from ray.serve.llm import LLMConfig

    def configured(metrics: str) -> tuple[bool, bool]:
        rec = record(engine={"metrics": metrics}).model_copy(update={"model_source": tiny_model_dir})
        config = LLMConfig(**app.llm_config_kwargs(rec))  # Serve LLM refuses its metrics without vLLM's stats
        return config.log_engine_metrics, config.engine_kwargs.get("disable_log_stats", False)

    assert configured("ray") == (True, False)  # Serve LLM's Ray logger replaces vLLM's Prometheus one
    assert configured("endpoint") == (False, False)  # vLLM's own logger, text at the app's /metrics
    assert configured("off") == (False, True)
    with pytest.raises(ValueError, match=r"engine.kwargs.disable_log_stats is not allowed here; set engine.metrics"):
        record(engine={"kwargs": {"disable_log_stats": True}})


def test_a_model_directory_skips_the_per_node_download_task_an_s3_model_keeps_it(tiny_model_dir):
    import asyncio

    from ray.llm._internal.common.callbacks.base import CallbackBase
    from ray.serve.llm import LLMConfig

    from services.node_init import LocalModelDirectory

    local = LLMConfig(**app.llm_config_kwargs(record().model_copy(update={"model_source": tiny_model_dir})))
    assert local.callback_config.callback_class == "services.node_init:LocalModelDirectory"
    callback = LocalModelDirectory(llm_config=local)
    asyncio.run(callback.run_callback("on_before_node_init"))  # as the replica's engine runs it before starting
    assert callback.ctx.run_init_node is False
    remote = app.llm_config_kwargs(record().model_copy(update={"model_source": "s3://models/chat"}))
    assert "callback_config" not in remote  # Serve LLM's default: download the model on each node
    assert LLMConfig(model_loading_config={"model_id": "x"}).callback_config.callback_class is CallbackBase


def test_cpu_replicas_reserve_exactly_their_cpus_gpu_replicas_their_gpus():
    cpu = app.llm_config_kwargs(record(placement={"cpus_per_replica": 2}))
    assert cpu["accelerator_config"] == {"kind": "cpu"}
    assert cpu["placement_group_config"] == {"bundles": [{"CPU": 2.0}], "strategy": "PACK"}
    assert cpu["deployment_config"]["ray_actor_options"] == {"num_cpus": 0}
    gpu = app.llm_config_kwargs(record(placement={"use_gpu": True, "accelerator_type": "A10G"}))
    assert gpu["accelerator_config"] == {"kind": "gpu"} and gpu["accelerator_type"] == "A10G"
    assert gpu["placement_group_config"] == {"bundles": [{"GPU": 1.0}], "strategy": "STRICT_PACK"}
    assert gpu["deployment_config"]["ray_actor_options"] == {"num_cpus": 1.0}


def test_autoscaling_and_rollout_reach_the_deployment():
    deployment = app.llm_config_kwargs(record(max_surge_percent=50))["deployment_config"]
    assert deployment["max_surge_percent"] == 50
    assert deployment["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 2,
        "initial_replicas": 1,
        "target_ongoing_requests": 4.0,
        "upscale_delay_s": 30.0,
        "downscale_delay_s": 600.0,
    }


def test_engine_env_joins_the_job_runtime_env():
    rec = record(engine={"env": {"VLLM_CPU_OMP_THREADS_BIND": "all"}}).model_copy(
        update={"runtime_env": {"working_dir": "gcs://pkg.zip", "env_vars": {"A": "1"}}}
    )
    env = app.runtime_env(rec)
    assert env == {"working_dir": "gcs://pkg.zip", "env_vars": {"A": "1", "VLLM_CPU_OMP_THREADS_BIND": "all"}}


def test_versions_roll_only_what_changed():
    base = record()
    version = app.version(base)
    rescaled = lifecycle.rescaled(base, {"max_replicas": 4})
    assert app.version(rescaled) == version  # a rescale restarts nothing
    assert app.version(record(http={"port": 9000})) == version
    # Keys and the body limit are the replicas' user_config: swapped in place, the model stays loaded.
    keyed = base.model_copy(update={"key_digests": ("sha256:" + "1" * 64,)})
    assert app.version(keyed) == version and app.version(record(limits={"max_request_bytes": 4096})) == version
    # The max_tokens cap is also the engine's ceiling for requests without one: the replicas restart with it.
    assert app.version(record(limits={"max_tokens": 8})) != version
    assert app.guard(keyed).key_digests == ("sha256:" + "1" * 64,)
    assert app.version(base.model_copy(update={"model_fingerprint": "f2"})) != version
    assert app.version(record(engine={"max_model_len": 512})) != version


def test_lora_on_restarts_the_replicas_once_adapters_come_and_go_in_place():
    plain = record()
    lora = record(lora={"max_adapters": 2})
    assert app.version(lora) != app.version(plain)  # the engine starts with LoRA on
    engine = app.llm_config_kwargs(lora)["engine_kwargs"]
    assert (engine["enable_lora"], engine["max_loras"], engine["max_lora_rank"]) == (True, 2, 16)
    assert "enable_lora" not in app.llm_config_kwargs(plain)["engine_kwargs"]
    adapter = Adapter(path="/adapters/a", pipeline="p", rank=8, fingerprint="x")
    with_adapter = lora.model_copy(update={"adapters": {"a": adapter}})
    assert app.version(with_adapter) == app.version(lora)  # an adapter loads into the running replicas
    assert app.user_config(with_adapter)["adapters"] == {"a": {"path": "/adapters/a", "fingerprint": "x"}}
    assert with_adapter.model_ids == ["chat", "a"] and with_adapter.route_prefix == "/chat"


def test_guard_travels_as_user_config_and_back():
    keyed = record(limits={"max_tokens": 99, "max_request_bytes": 4096}).model_copy(
        update={"key_digests": ("sha256:" + "2" * 64,)}
    )
    guard = app.guard(keyed)
    config = json.loads(json.dumps(guard.to_config()))  # what Serve stores and hands to reconfigure()
    assert Guard.from_config(config) == guard and guard.max_tokens == 99 and guard.key_digests == keyed.key_digests


def test_scale_changes_and_their_errors():
    assert lifecycle.scale_changes(replicas=3) == {"min_replicas": 3, "max_replicas": 3}
    assert lifecycle.scale_changes(max_replicas=4, target_ongoing_requests=2) == {
        "max_replicas": 4,
        "target_ongoing_requests": 2,
    }
    with pytest.raises(SpecError, match="nothing to change"):
        lifecycle.scale_changes()
    with pytest.raises(SpecError, match="either --replicas or --min/--max"):
        lifecycle.scale_changes(replicas=2, max_replicas=3)
    with pytest.raises(SpecError, match=r"cannot scale 'chat': autoscaling.min_replicas \(3\) is above max_replicas"):
        lifecycle.rescaled(record(), {"min_replicas": 3})


DETAILS = {
    "http_options": {"host": "0.0.0.0", "port": 8123},
    "applications": {
        "chat": {
            "status": "RUNNING",
            "route_prefix": "/chat",
            "deployments": {
                "LLMServer:chat": {
                    "status": "UPSCALING",
                    "target_num_replicas": 2,
                    "deployment_config": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2}},
                    "replicas": [{"state": "RUNNING"}, {"state": "STARTING"}],
                },
                "LlmctlIngress": {"status": "HEALTHY", "deployment_config": {}, "replicas": [{"state": "RUNNING"}]},
            },
        }
    },
}


def test_summarize_serve_details():
    s = lifecycle.summarize(DETAILS, "chat", host_fallback="10.0.0.5")
    assert s["endpoint"] == "http://10.0.0.5:8123/chat/v1" and s["replicas"] == 1
    model = s["deployments"]["LLMServer:chat"]
    assert model["replicas"] == {"RUNNING": 1, "STARTING": 1} and model["target_replicas"] == 2
    assert s["model_deployment"] == "LLMServer:chat"
    with pytest.raises(ClusterError, match=r"no Serve application named 'nope' \(running: chat\)"):
        lifecycle.summarize(DETAILS, "nope")


def test_usage_hint_has_endpoint_chat_page_dashboard_and_curl():
    text = usage("http://h:8000/v1", "chat", "http://h:8265", api_key_env="LLMCTL_API_KEY")
    assert "Endpoint:  http://h:8000/v1" in text and "Dashboard: http://h:8265/#/serve" in text
    assert "Chat page: http://h:8000/  (in a browser)" in text
    assert "curl http://h:8000/v1/chat/completions" in text and 'Bearer $LLMCTL_API_KEY"' in text
    assert "Authorization" not in usage("http://h:8000/v1", "chat")


def test_model_fingerprint_follows_the_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    first = app.model_fingerprint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    assert app.model_fingerprint(str(tmp_path)) != first
    assert app.model_fingerprint("s3://bucket/model") == ""


def test_context_longer_than_the_model_is_refused_before_deploying(tmp_path):
    from services.stage import check_context_length

    (tmp_path / "config.json").write_text('{"max_position_embeddings": 128}')
    check_context_length("serve", record(engine={"max_model_len": 128}).stage, str(tmp_path))
    check_context_length("serve", record().stage, str(tmp_path))  # unset: vLLM takes the model's own
    with pytest.raises(StageError, match=r"stages.serve.engine.max_model_len: 256 is longer than the model's "
                       r"context of 128 tokens .* Lower max_model_len to 128"):  # fmt: skip
        check_context_length("serve", record(engine={"max_model_len": 256}).stage, str(tmp_path))


def test_serve_llm_accepts_the_config(tiny_model_dir):
    from ray.serve.llm import LLMConfig

    rec = record(engine={"max_model_len": 128}).model_copy(update={"model_source": tiny_model_dir})
    config = LLMConfig(**app.llm_config_kwargs(rec))
    assert config.model_id == "chat" and config.max_request_context_length == 128
    assert config.engine_kwargs["override_generation_config"] == {"max_new_tokens": 1024}
    assert config.get_engine_config().get_initialization_kwargs()["distributed_executor_backend"] == "mp"


def test_remote_results_keep_their_error_type():
    from services import remote

    ok = f"noise\n{remote.RESULT_PREFIX}" + '{"result": {"name": "chat", "deleted": true}}\n'
    assert remote._result(ok, "job1") == {"name": "chat", "deleted": True}
    spec_error = remote.RESULT_PREFIX + '{"error": "cannot scale \'chat\': bad", "type": "SpecError"}'
    with pytest.raises(SpecError, match="cannot scale 'chat': bad"):
        remote._result(spec_error, "job1")
    with pytest.raises(ClusterError, match="Ray job job1 ended without a result"):
        remote._result("Traceback ...\nModuleNotFoundError: No module named 'ray'", "job1")


def test_remote_job_uses_this_python_only_for_a_local_head():
    import sys

    from services import remote

    assert remote._python("http://127.0.0.1:8265") == sys.executable
    assert remote._python("http://10.255.255.1:8265") == "python"


def test_probe_of_an_endpoint_that_does_not_answer_names_the_field_to_skip_it():
    from services.stage import probe_once
    from tests.conftest import free_port

    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    expected = f"stages.serve: the deployed app did not answer a test request at {endpoint}: .*Set " \
        "stages.serve.probe_requests: 0 to deploy without the check"
    with pytest.raises(StageError, match=expected):
        probe_once("serve", endpoint, "tiny")


def test_a_port_another_process_holds_is_refused_with_the_field_that_fixes_it():
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(StageError) as info:
            lifecycle.check_port("serve", "127.0.0.1", port)
        assert str(info.value) == taken_port_message(
            port, "another process, so Serve's proxy cannot listen there", "stop that process"
        )
    lifecycle.check_port("serve", "127.0.0.1", port)  # released: nothing to say

"""Build the Ray Serve application of a serve stage: one deployment of vLLM `LLMServer` replicas, each its own
OpenAI HTTP ingress (services.server).

`AppRecord` is everything the build needs, resolved once in the job driver (model location, key digests, the job's
runtime_env) and stored in the cluster, so `llmctl serve scale` can rebuild the same app from any driver.
The pure functions (engine kwargs, autoscaling, versions) import no Ray and are unit-tested; `build_app` imports
Ray Serve LLM when called.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field

from pipelines.spec.base import Model, vllm_memory_fraction
from pipelines.spec.serve import Autoscaling, Limits, Lora, ServeStage
from services.auth import Guard

SERVICES_DIR = os.path.dirname(os.path.abspath(__file__))
SERVER_PREFIX = "LLMServer:"  # model deployments are named LLMServer:<model id>, as Serve LLM names them


class Adapter(Model):
    """A LoRA adapter served on an app's model under its own model id."""

    path: str = Field(description="The adapter directory (adapter_config.json, adapter_model.safetensors).")
    pipeline: str = Field(description="The pipeline whose serve stage attached it: its owner.")
    rank: int = Field(description="Its LoRA rank (r in adapter_config.json).")
    fingerprint: str = Field("", description="Hash of its files, so new weights at one path reload.")


class AppRecord(Model):
    """The resolved inputs of one deployed application (no secrets: API keys are digests)."""

    stage: ServeStage = Field(description="The serve stage spec as submitted (possibly rescaled later).")
    name: str = Field(description="Serve application name and OpenAI model id.")
    model_source: str = Field(description="Absolute model directory or s3:// URI handed to vLLM.")
    model_fingerprint: str = Field("", description="Hash of the model files, so new weights at one path roll.")
    key_digests: tuple[str, ...] = Field((), description="SHA-256 digests of the accepted API keys.")
    pipeline: str = Field("", description="The pipeline whose serve stage deployed the app: its owner.")
    adapters: dict[str, Adapter] = Field(
        default_factory=dict, description="LoRA adapters served on the app's model, by model id."
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="The deploying job's runtime_env, reused so rebuilds match exactly."
    )

    @property
    def route_prefix(self) -> str:
        return self.stage.http.prefix(self.name)

    @property
    def model_ids(self) -> list[str]:
        """The OpenAI model ids the app answers to: its model's, then its adapters'."""
        return [self.name, *sorted(self.adapters)]

    def with_autoscaling(self, autoscaling: Autoscaling) -> AppRecord:
        stage = self.stage.model_copy(update={"autoscaling": autoscaling})
        return self.model_copy(update={"stage": stage})


def model_fingerprint(model_dir: str) -> str:
    """Names, sizes and mtimes of a local model directory's files (remote sources: empty, their URI versions)."""
    if not os.path.isdir(model_dir):
        return ""
    entries = []
    for root, _, files in os.walk(model_dir):
        for f in sorted(files):
            st = os.stat(os.path.join(root, f))
            entries.append((os.path.relpath(os.path.join(root, f), model_dir), st.st_size, st.st_mtime_ns))
    return _hash(sorted(entries))


def lora_kwargs(lora: Lora | None) -> dict[str, Any]:
    """vLLM's LoRA engine arguments: adapters per batch, and as many more kept in host memory."""
    if lora is None:
        return {}
    return {"enable_lora": True, "max_loras": lora.max_adapters, "max_lora_rank": lora.max_rank,
            "max_cpu_loras": 4 * lora.max_adapters}  # fmt: skip


def engine_kwargs(stage: ServeStage) -> dict[str, Any]:
    """vLLM engine arguments from the spec; the memory default depends on the device."""
    engine, use_gpu = stage.engine, stage.placement.use_gpu
    kwargs: dict[str, Any] = {
        "dtype": engine.dtype,
        "enforce_eager": engine.enforce_eager,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "gpu_memory_utilization": vllm_memory_fraction(engine.gpu_memory_utilization, use_gpu),
    }
    if engine.max_model_len is not None:
        kwargs["max_model_len"] = engine.max_model_len
    if engine.kv_cache_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = engine.kv_cache_bytes
    if engine.metrics == "off":
        kwargs["disable_log_stats"] = True
    kwargs = {**kwargs, **engine.kwargs}
    if stage.limits.max_tokens is not None:
        kwargs["override_generation_config"] = output_ceiling(kwargs.get("override_generation_config"), stage.limits)
    return kwargs


def output_ceiling(overrides: dict[str, Any] | None, limits: Limits) -> dict[str, Any]:
    """vLLM's generation overrides with limits.max_tokens as the ceiling on output tokens.

    vLLM takes the smallest of the request's max_tokens, the rest of the context and this ceiling (`vllm serve
    --override-generation-config '{"max_new_tokens": N}'`), so a request without max_tokens gets the rest of the
    context up to the cap, as on `vllm serve`; the ingress answers explicit values above the cap with a 400."""
    overrides = dict(overrides or {})
    own = overrides.get("max_new_tokens")
    overrides["max_new_tokens"] = min(own, limits.max_tokens) if own else limits.max_tokens
    return overrides


def autoscaling_config(autoscaling: Autoscaling) -> dict[str, Any]:
    config = autoscaling.model_dump(exclude_none=True)
    config.setdefault("initial_replicas", autoscaling.min_replicas)
    return config


def placement(stage: ServeStage) -> dict[str, Any]:
    """LLMConfig placement: CPU replicas reserve exactly cpus_per_replica; GPU replicas one GPU per TP rank, all on
    one node (STRICT_PACK: Serve LLM's default, PACK, lets a tensor-parallel replica straddle nodes when no single
    node has room, and its all-reduce would then cross the network every layer)."""
    p = stage.placement
    if p.use_gpu:
        tp = stage.engine.tensor_parallel_size
        return {
            "accelerator_type": p.accelerator_type,
            "accelerator_config": {"kind": "gpu"},
            "ray_actor_options": {"num_cpus": p.cpus_per_replica},
            "placement_group_config": {"bundles": [{"GPU": 1.0} for _ in range(tp)], "strategy": "STRICT_PACK"},
        }
    return {
        "accelerator_type": None,
        "accelerator_config": {"kind": "cpu"},
        # The replica actor joins the engine's bundle, so it reserves nothing on its own.
        "ray_actor_options": {"num_cpus": 0},
        "placement_group_config": {"bundles": [{"CPU": p.cpus_per_replica}], "strategy": "PACK"},
    }


def runtime_env(record: AppRecord) -> dict[str, Any]:
    env = dict(record.runtime_env)
    if record.stage.engine.env:
        env["env_vars"] = {**env.get("env_vars", {}), **record.stage.engine.env}
    return env


def llm_config_kwargs(record: AppRecord) -> dict[str, Any]:
    stage = record.stage
    where = placement(stage)
    deployment: dict[str, Any] = {
        "autoscaling_config": autoscaling_config(stage.autoscaling),
        "ray_actor_options": where["ray_actor_options"],
        "max_surge_percent": stage.max_surge_percent,
    }
    return {
        "model_loading_config": {"model_id": record.name, "model_source": record.model_source},
        "engine_kwargs": {**engine_kwargs(stage), **lora_kwargs(stage.lora)},
        "accelerator_type": where["accelerator_type"],
        "accelerator_config": where["accelerator_config"],
        "placement_group_config": where["placement_group_config"],
        "deployment_config": deployment,
        "runtime_env": runtime_env(record),
        # False: vLLM keeps its own Prometheus logger (served at /metrics) in place of Ray's, or none when off.
        "log_engine_metrics": stage.engine.metrics == "ray",
        **node_init(record.model_source),
    }


def node_init(model_source: str) -> dict[str, Any]:
    """A model directory on a path is served where it is: no per-node download task (services.node_init)."""
    if "://" in model_source:
        return {}
    return {"callback_config": {"callback_class": "services.node_init:LocalModelDirectory"}}


def guard(record: AppRecord) -> Guard:
    limits = record.stage.limits
    return Guard(record.key_digests, limits.max_request_bytes, limits.max_tokens)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_fingerprint() -> str:
    """The serving code itself: an llmctl upgrade must restart replicas even when the spec is unchanged."""
    names = sorted(f for f in os.listdir(SERVICES_DIR) if f.endswith(".py"))
    return _hash([(f, Path(SERVICES_DIR, f).read_bytes().hex()) for f in names])


def version(record: AppRecord) -> str:
    """The deployment's version: a change restarts (rolls) its replicas, which reloads the model.

    Left out: autoscaling and the route (Serve applies them in place), the proxy address (read only when Serve
    starts), what only the job uses, and the keys and the body limit, which travel as user_config (`Guard.to_config`)
    and are swapped in place, so rotating a key does not reload the model. The max_tokens cap is also the engine's
    ceiling for requests without one (`output_ceiling`), so changing it restarts the replicas.
    """
    stage = record.stage.model_dump(
        exclude={"autoscaling", "http", "deploy_timeout_s", "probe_requests", "api_key_env", "api_keys", "limits",
                 "lora", "base_app"}
    )
    ceiling, lora = record.stage.limits.max_tokens, record.stage.lora
    return _hash([stage, ceiling, record.model_source, record.model_fingerprint, record.runtime_env,
                  lora.model_dump() if lora else None, code_fingerprint()])  # fmt: skip


def fingerprint(record: AppRecord) -> str:
    """Everything a deploy of `record` puts in the cluster: the record and the serving code (an upgrade redeploys).
    Stored with an app once it serves, so an unchanged resubmit confirms the app instead of rebuilding it."""
    return _hash([record.model_dump(mode="json"), code_fingerprint()])


def _finalized(app: Any, version: str, env: dict[str, Any], user_config: dict[str, Any]) -> Any:
    """The application with a content version, exactly `env` as runtime_env, and the guard as user_config.

    Serve gives code deployed from Python a random version, so every redeploy would restart every replica (a vLLM
    reload); a content version turns a rescale or a key rotation into a lightweight update. That only holds if the
    replica options are identical too, so the runtime_env is pinned as well: by default the builders merge in the
    *current* driver's runtime_env, which differs between the pipeline job and a later `llmctl serve scale`.
    """
    from ray.serve.deployment import Application

    deployment = app._bound_deployment
    options = dict(deployment.ray_actor_options or {})
    hook = (options.get("runtime_env") or {}).get("worker_process_setup_hook")  # Serve LLM's import warm-up
    options["runtime_env"] = {**env, **({"worker_process_setup_hook": hook} if hook else {})}
    updated = deployment.options(version=version, ray_actor_options=options, user_config=user_config, _internal=True)
    return Application(updated)


def build_app(record: AppRecord) -> Any:
    """The Serve application: LLMServer (vLLM) replicas that serve vLLM's OpenAI app behind llmctl's guard."""
    from ray import serve
    from ray.serve.llm import LLMConfig, build_llm_deployment

    from services.server import LlmctlServer

    config = LLMConfig(**llm_config_kwargs(record))
    # serve.ingress() without an app: the replica builds its ASGI app once the engine runs (__serve_build_asgi_app__)
    deployment = build_llm_deployment(config, name_prefix=SERVER_PREFIX, deployment_cls=serve.ingress()(LlmctlServer))
    return _finalized(deployment, version(record), runtime_env(record), user_config(record))


def user_config(record: AppRecord) -> dict[str, Any]:
    """What the replicas take in place, without a restart (LlmctlServer.reconfigure): the guard and the adapters."""
    adapters = {name: adapter.model_dump(include={"path", "fingerprint"}) for name, adapter in record.adapters.items()}
    return {**guard(record).to_config(), "adapters": adapters}

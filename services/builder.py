"""The llmctl LLM application and the model gateway as Serve config entry points, for deployments that do not go
through a pipeline job: KubeRay's RayService (`serveConfigV2`) and `serve deploy config.yaml`.

    applications:
      - name: tiny
        route_prefix: /tiny                      # the app's own route: /<name> unless stage.http.route_prefix says
        import_path: services.builder:app_builder
        args: {name: tiny, model_source: s3://bucket/models/tiny, stage: {kind: serve, model: ..., autoscaling: ...}}
      - name: llmctl-gateway                     # one base URL for every model: /v1/models, requests by `model`
        route_prefix: /
        import_path: services.builder:gateway_builder

`args` are the fields of an `AppRecord` (services.app), the same inputs a serve stage resolves in its job.
"""

from __future__ import annotations

from typing import Any

from services import auth, lifecycle
from services.app import AppRecord, build_app


def record_from_args(args: dict[str, Any]) -> AppRecord:
    """Validate Serve config args into an AppRecord. Keys named in stage.api_key_env are read where this runs (the
    Serve controller on the head, e.g. from a Kubernetes Secret), and only their digests are kept."""
    record = AppRecord.model_validate(args)
    if record.key_digests:
        return record
    digests = auth.key_digests(record.stage.api_key_env, record.stage.api_keys)
    return record.model_copy(update={"key_digests": tuple(digests)})


def app_builder(args: dict[str, Any]) -> Any:
    """Serve's application builder: one argument (the config's `args`), returns the bound application. It runs on
    the cluster, so it also records the app there for the gateway (lifecycle.register_config_app)."""
    record = record_from_args(args)
    lifecycle.register_config_app(record)
    return build_app(record)


def gateway_builder(args: dict[str, Any] | None = None) -> Any:
    """The model gateway (services.gateway) as a Serve config application; it takes no args."""
    if args:
        raise ValueError(f"the llmctl gateway takes no args (got {sorted(args)}): remove `args` from its entry")
    return lifecycle.gateway_app({})

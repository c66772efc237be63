"""Deploy, inspect, rescale and remove llmctl Serve applications.

Two ways in, one implementation:
- in the cluster (a Ray driver: the pipeline job, a test, `python -m services.remote`): Ray Serve's Python API;
- from outside through a dashboard URL (`http://head:8265`, what `llmctl --address` takes): `status` reads Serve's
  REST API, `scale`/`down` run themselves as a short Ray job (services.remote), because a dashboard address gives
  no driver connection and Serve's REST API can only replace or delete every application at once.

An app's build inputs (`AppRecord`) are kept in the cluster's internal KV, so a rescale rebuilds exactly the app
the pipeline deployed; with its pinned versions Serve applies it without restarting a replica.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from pipelines.errors import ClusterError, SpecError, StageError
from pipelines.spec.serve import GATEWAY_APP
from services import remote
from services.app import SERVER_PREFIX, AppRecord, build_app, code_fingerprint, fingerprint

KV_NAMESPACE = "llmctl"
GATEWAY_KEY = b"gateway/version"
Log = Callable[[str], None]


def _kv_key(name: str) -> bytes:
    return f"serve/{name}".encode()


def save_record(record: AppRecord) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(_kv_key(record.name), record.model_dump_json(), overwrite=True, namespace=KV_NAMESPACE)


def load_record(name: str) -> AppRecord:
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(_kv_key(name), namespace=KV_NAMESPACE)
    if raw is None:
        raise ClusterError(
            f"no llmctl record for Serve application '{name}' on this cluster: it was not deployed by a llmctl "
            f"serve stage (running apps: {', '.join(_app_names()) or 'none'}). Re-run the pipeline to deploy it."
        )
    return AppRecord.model_validate_json(raw)


def delete_record(name: str) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(_kv_key(name), namespace=KV_NAMESPACE)
    internal_kv._internal_kv_del(_served_key(name), namespace=KV_NAMESPACE)


def _served_key(name: str) -> bytes:
    return f"serve/{name}/served".encode()


def mark_served(record: AppRecord, endpoint: str) -> None:
    """Remember that the app now serves exactly `record` at `endpoint`: stored once a deploy or rescale has finished,
    never while one is under way, so an interrupted rollout is deployed again."""
    _put_served(record.name, fingerprint(record), endpoint)


def _put_served(name: str, digest: str, endpoint: str) -> None:
    from ray.experimental import internal_kv

    served = json.dumps({"fingerprint": digest, "endpoint": endpoint})
    internal_kv._internal_kv_put(_served_key(name), served, overwrite=True, namespace=KV_NAMESPACE)


def _served(name: str) -> dict[str, str]:
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(_served_key(name), namespace=KV_NAMESPACE)
    return json.loads(raw) if raw is not None else {}


def records() -> dict[str, AppRecord]:
    """Every llmctl app recorded on this cluster, by name."""
    from ray.experimental import internal_kv

    names = {key.decode().split("/")[1] for key in internal_kv._internal_kv_list("serve/", namespace=KV_NAMESPACE)}
    found = {}
    for name in sorted(names):
        raw = internal_kv._internal_kv_get(_kv_key(name), namespace=KV_NAMESPACE)
        if raw is None:
            continue
        try:
            found[name] = AppRecord.model_validate_json(raw)
        except ValidationError:  # a record an older llmctl wrote (its app at '/'): not routed to
            continue
    return found


@dataclass(frozen=True)
class ModelRoute:
    """Where the gateway sends a model's requests: its app, that app's base URL, and the keys the app accepts."""

    app: str
    endpoint: str
    key_digests: tuple[str, ...]


def routes() -> dict[str, ModelRoute]:
    """Every model id served on this cluster, once its app's deploy has finished (its served marker)."""
    table = {}
    for name, record in records().items():
        endpoint = _served(name).get("endpoint")
        if endpoint:
            table.update({model: ModelRoute(name, endpoint, record.key_digests) for model in record.model_ids})
    return table


def app_serving(model_source: str) -> AppRecord | None:
    """The llmctl app on this cluster whose model is `model_source` (the same directory), if there is one."""
    wanted = _same_place(model_source)
    return next((r for r in records().values() if _same_place(r.model_source) == wanted), None)


def _same_place(uri: str) -> str:
    return uri.rstrip("/") if "://" in uri else os.path.realpath(uri)


def check_owner(record: AppRecord, stage: str = "serve", model: str | None = None) -> None:
    """Refuse a deploy that would take over another pipeline's app, model id or route prefix, before anything is
    touched: Serve itself would roll the other pipeline's app over to this model (same name) or fail mid-deploy.
    `model` is the model id the stage serves: the app's own, or a LoRA adapter's it attaches to the app."""
    field, model = f"stages.{stage}", model or record.name
    for name, other in records().items():
        owner = _owner(other.pipeline)
        if name == record.name and model == name and other.pipeline != record.pipeline:
            raise _taken(stage, f"the Serve application '{name}'", other.pipeline, other.model_source,
                         record.pipeline, "app", model)  # fmt: skip
        if name == record.name and model != name:
            theirs, mine = other.adapters.get(model), record.adapters[model].pipeline
            if theirs is not None and theirs.pipeline != mine:
                raise _taken(stage, f"the LoRA adapter '{model}' of '{name}'", theirs.pipeline, theirs.path, mine,
                             "adapter", model)  # fmt: skip
        if name == record.name:
            continue
        if model in other.model_ids:
            raise StageError(
                f"{field}.name: model id '{model}' is already served by the app '{name}' of {owner}; clients "
                f"pick models by id, so two apps cannot share one. Rename this one (`--set {stage}.name=...`)."
            )
        if model == record.name and other.route_prefix == record.route_prefix:
            raise StageError(
                f"{field}.http.route_prefix: '{record.route_prefix}' is the route of the app '{name}' of {owner}. "
                f"Set stages.{stage}.http.route_prefix to another prefix, or leave it unset (/<app name>)."
            )


def _taken(stage: str, what: str, owner: str, serves: str, mine: str, kind: str, model: str) -> StageError:
    """The refusal for a name another pipeline holds: whose it is, what it serves, and the two ways out."""
    return StageError(
        f"stages.{stage}.name: {what} on this cluster belongs to {_owner(owner)} (it serves {serves}), not "
        f"to pipeline '{mine}'. Give this {kind} another name (`--set {stage}.name=...`), or remove that one first "
        f"with `llmctl serve down {model}`."
    )


def _owner(pipeline: str) -> str:
    """Who deployed an app: a pipeline's serve stage, or a Serve config (which names no pipeline)."""
    return f"pipeline '{pipeline}'" if pipeline else "a Serve config (a KubeRay RayService or `serve deploy`)"


def _app_names() -> list[str]:
    from ray import serve

    return sorted(a for a in serve.status().applications if a != GATEWAY_APP)


def start_serve(host: str, port: int, log: Log, stage: str = "serve") -> tuple[str, int]:
    """Start Serve's HTTP proxy on host:port unless Serve runs already; return where the proxy really listens."""
    from ray import serve
    from ray.serve.context import _get_global_client

    if _get_global_client(raise_if_no_controller_running=False) is None:
        check_port(stage, host, port)
    serve.start(http_options={"host": host, "port": port})
    http = _get_global_client().http_config
    if (http.host, http.port) != (host, port):
        log(f"Serve already runs with its proxy on {http.host}:{http.port}; serving there (asked {host}:{port}).")
    return http.host, http.port


def port_in_use(host: str, port: int) -> bool:
    """Whether a listening socket holds host:port on this machine (a port in TIME_WAIT is free to take)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def served_models(base_url: str) -> list[str]:
    """The models an llmctl app at base_url serves, as its /health names them (services.ingress); [] when nothing
    answers there or something that is not an llmctl app does."""
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=3) as resp:
            models = json.loads(resp.read()).get("models")
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return []
    return [m for m in models if isinstance(m, str)] if isinstance(models, list) else []


def check_port(stage: str, host: str, port: int) -> None:
    """Refuse to start Serve's proxy on a port another process holds: its ingress would fail to bind, deep in Serve
    (HAProxy's 'cannot bind socket' in a long traceback). Names the llmctl app holding the port, if one does."""
    if not port_in_use(host, port):
        return
    field = f"stages.{stage}.http.port"
    use_free = f"set {field} to a free port (`--set {stage}.http.port={next_free_port(host, port)}`)"
    apps = served_models(f"http://{_local(host)}:{port}")
    if len(apps) == 1:
        raise StageError(
            f"{field}: {host}:{port} is already taken by the llmctl app '{apps[0]}' (the Serve proxy of another "
            f"Ray cluster on this machine). Either {use_free}, or remove that app with `llmctl serve down "
            f"{apps[0]}` on its cluster."
        )
    if apps:
        raise StageError(
            f"{field}: {host}:{port} is already taken by the llmctl apps {', '.join(repr(a) for a in apps)} (the "
            f"Serve proxy of another Ray cluster on this machine). Either {use_free}, or remove those apps with "
            "`llmctl serve down NAME` on their cluster."
        )
    raise StageError(
        f"{field}: {host}:{port} is already taken by another process, so Serve's proxy cannot listen there. "
        f"Either {use_free}, or stop that process."
    )


def next_free_port(host: str, port: int) -> int:
    """The first port above `port` that is free now, to suggest in place of a taken one."""
    return next((p for p in range(port + 1, min(port + 100, 65536)) if not port_in_use(host, p)), port + 1)


def _local(host: str) -> str:
    """An address of this machine to connect to for a bind address (a wildcard binds loopback too)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def endpoint_url(host: str, port: int, route_prefix: str) -> str:
    """The OpenAI base URL clients use (…/v1)."""
    if host in ("0.0.0.0", "::", ""):
        import ray

        host = ray.util.get_node_ip_address()
    return f"http://{host}:{port}{route_prefix.rstrip('/')}/v1"


def deploy(record: AppRecord, log: Log = print, stage: str = "serve", model: str | None = None) -> dict[str, Any]:
    """Deploy (or roll) the application, wait until it serves, and describe it. `stage` names the serve stage in
    errors about its fields; `model` is the model id it serves (a LoRA adapter's, when it attaches one)."""
    from ray import serve

    http = record.stage.http
    check_owner(record, stage, model)
    host, port = start_serve(http.host, http.port, log, stage)
    started = time.monotonic()
    target = serve.RunTarget(target=build_app(record), name=record.name, route_prefix=record.route_prefix)
    serve.run_many([target, *gateway_target(record.runtime_env)], wait_for_applications_running=False)
    save_record(record)
    wait_running(record.name, record.stage.deploy_timeout_s, log)
    endpoint = endpoint_url(host, port, record.route_prefix)
    wait_http(endpoint.removesuffix("/v1") + "/health", timeout_s=120.0)
    summary = status(record.name)
    mark_served(record, summary["endpoint"])
    wait_running(GATEWAY_APP, 120.0, log)
    summary["deploy_s"], summary["unchanged"] = round(time.monotonic() - started, 1), False
    return summary


def gateway_target(runtime_env: dict[str, Any]) -> list[Any]:
    """The gateway app (services.gateway) to deploy beside an app, unless this code's gateway already runs: one
    replica, no CPU reserved, versioned by the serving code, so an unchanged gateway is never restarted."""
    from ray import serve
    from ray.experimental import internal_kv

    version = code_fingerprint()
    running = serve.status().applications.get(GATEWAY_APP)
    deployed = internal_kv._internal_kv_get(GATEWAY_KEY, namespace=KV_NAMESPACE)
    if running is not None and running.status.value == "RUNNING" and deployed == version.encode():
        return []
    internal_kv._internal_kv_put(GATEWAY_KEY, version, overwrite=True, namespace=KV_NAMESPACE)
    return [serve.RunTarget(target=gateway_app(runtime_env), name=GATEWAY_APP, route_prefix="/")]


def gateway_app(runtime_env: dict[str, Any]) -> Any:
    """The gateway's Serve application, versioned by the serving code (Serve's own version is random per deploy)."""
    from ray import serve

    from services.gateway import Gateway

    deployment = serve.deployment(Gateway, name="Gateway", num_replicas=1, max_ongoing_requests=1000,
                                  ray_actor_options={"num_cpus": 0, "runtime_env": runtime_env})  # fmt: skip
    return deployment.options(version=code_fingerprint(), _internal=True).bind()


def register_config_app(record: AppRecord) -> None:
    """Record an app that a Serve config deploys (KubeRay's RayService, `serve deploy`) as a serve stage records its
    own, so the gateway routes its model and `llmctl serve status` lists it. The gateway reaches it through the
    Serve proxy of its own node. Its served marker has no fingerprint, so nothing takes it for a finished serve
    stage's deploy (confirm_unchanged), and its record names no pipeline, so no pipeline takes its name over."""
    save_record(record)
    _put_served(record.name, "", endpoint_url("127.0.0.1", record.stage.http.port, record.route_prefix))


def confirm_unchanged(record: AppRecord) -> dict[str, Any] | None:
    """The app's summary when it already serves exactly `record` (same spec, model files, keys, runtime_env and
    serving code: the fingerprint its last finished deploy stored), has live replicas and answers /health with its
    name; None when it must be deployed.

    What a resubmit with every stage cached costs: no Serve, Serve LLM or vLLM import (Serve's alone takes seconds
    to import and to tear down when the job ends), no rebuilt config."""
    served = _served(record.name)
    if served.get("fingerprint") != fingerprint(record):
        return None
    replicas = live_replicas(record.name)
    if not replicas or record.name not in served_models(served["endpoint"].removesuffix("/v1")):
        return None
    return {"name": record.name, "status": "RUNNING", "endpoint": served["endpoint"], "replicas": replicas,
            "deploy_s": 0.0, "unchanged": True}  # fmt: skip


def live_replicas(name: str) -> int:
    """The app's model replicas alive in Ray's actor table (Serve names their actor class after app and deployment)."""
    import ray
    from ray.util.state import list_actors

    replica_class = f"ServeReplica:{name}:{SERVER_PREFIX}{name}"
    filters = [("class_name", "=", replica_class), ("state", "=", "ALIVE")]
    # This driver's cluster, named: on a machine with several clusters Ray's own lookup would not pick one.
    return len(list_actors(address=ray.get_runtime_context().gcs_address, filters=filters, limit=10_000))


def _deployment_problems(app: Any) -> str:
    return "; ".join(f"{name}: {d.status.value} {d.message}".strip() for name, d in app.deployments.items())


def wait_running(name: str, timeout_s: float, log: Log = print, poll_s: float = 0.5) -> None:
    """Block until the app is RUNNING with every deployment HEALTHY (rollouts included); fail with Serve's words."""
    from ray import serve

    deadline, last_log = time.monotonic() + timeout_s, 0.0
    while True:
        app = serve.status().applications.get(name)
        state = app.status.value if app else "NOT_STARTED"
        healthy = app is not None and all(d.status.value == "HEALTHY" for d in app.deployments.values())
        if state == "RUNNING" and healthy:
            return
        if state == "DEPLOY_FAILED":
            raise StageError(f"Serve application '{name}' failed to deploy: {app.message} {_deployment_problems(app)}")
        if time.monotonic() > deadline:
            detail = _deployment_problems(app) if app else "no such application"
            raise StageError(
                f"Serve application '{name}' is not healthy after {timeout_s:.0f}s (status {state}): {detail}. "
                "If replicas cannot be scheduled, lower placement.cpus_per_replica or add nodes; raise "
                "deploy_timeout_s for slow model loads."
            )
        if time.monotonic() - last_log > 15:
            log(f"waiting for '{name}': {state}; {_deployment_problems(app) if app else ''}")
            last_log = time.monotonic()
        time.sleep(poll_s)


def wait_http(url: str, timeout_s: float) -> None:
    """Block until the proxy routes to the app (the route table lags the app status by a moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise StageError(f"the application reports RUNNING but {url} did not answer 200 in {timeout_s:.0f}s")
        time.sleep(0.25)


# ---- status / scale / down -------------------------------------------------------------------------------------


def is_dashboard(address: str | None) -> bool:
    return bool(address) and address.startswith(("http://", "https://"))


def connect(address: str | None = None) -> None:
    """Join the cluster as a driver: `address` (GCS host:port or ray://), else RAY_ADDRESS, else the local head."""
    import ray

    if ray.is_initialized():
        return
    from cluster.local import LocalHead

    target = address or os.environ.get("RAY_ADDRESS") or LocalHead().gcs_address
    try:
        ray.init(address=target, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(
            f"cannot reach a Ray cluster at {target}: {exc}. Start one with `llmctl cluster up` or pass --address."
        ) from exc


def serve_details(address: str | None = None) -> dict[str, Any]:
    """Serve's instance details (applications, deployments, replicas, HTTP options), as its REST API returns them."""
    if is_dashboard(address):
        return _get_json(f"{address.rstrip('/')}/api/serve/applications/")
    connect(address)
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client()
    except Exception:  # Serve's controller is not running: there are no applications
        return {"applications": {}, "http_options": {}}
    return json.loads(json.dumps(client.get_serve_details(), default=str))


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ClusterError(f"cannot read {url}: {exc}. Is the Ray dashboard address right?") from exc


def summarize(details: dict[str, Any], name: str, host_fallback: str = "127.0.0.1") -> dict[str, Any]:
    """One application's status: overall state, endpoint, and per deployment its replicas and autoscaling."""
    apps = details.get("applications") or {}
    if name not in apps:
        raise ClusterError(f"no Serve application named '{name}' (running: {', '.join(sorted(apps)) or 'none'}).")
    app, http = apps[name], details.get("http_options") or {}
    deployments = {dname: _summarize_deployment(d) for dname, d in (app.get("deployments") or {}).items()}
    model_name = next((dname for dname in deployments if dname.startswith(SERVER_PREFIX)), None)
    model = deployments.get(model_name, {})
    host = http.get("host", "127.0.0.1")
    host = host_fallback if host in ("0.0.0.0", "::", "") else host
    prefix = app.get("route_prefix") or "/"
    return {
        "name": name,
        "status": app.get("status"),
        "message": app.get("message", ""),
        "endpoint": f"http://{host}:{http.get('port', 8000)}{prefix.rstrip('/')}/v1",
        "replicas": model.get("replicas", {}).get("RUNNING", 0),
        "model_deployment": model_name,
        "deployments": deployments,
    }


def _summarize_deployment(d: dict[str, Any]) -> dict[str, Any]:
    replicas: dict[str, int] = {}
    for replica in d.get("replicas") or []:
        replicas[replica.get("state", "?")] = replicas.get(replica.get("state", "?"), 0) + 1
    auto = (d.get("deployment_config") or {}).get("autoscaling_config") or {}
    return {
        "status": d.get("status"),
        "message": d.get("message", ""),
        "target_replicas": d.get("target_num_replicas"),
        "replicas": replicas,
        "autoscaling": {k: auto.get(k) for k in ("min_replicas", "max_replicas", "target_ongoing_requests")},
    }


def status(name: str, address: str | None = None) -> dict[str, Any]:
    return summarize(serve_details(address), name, host_fallback=_host(address))


def status_all(address: str | None = None) -> list[dict[str, Any]]:
    """Every llmctl app's status (the gateway's too, last), as `llmctl serve status` without a name lists them."""
    details, host = serve_details(address), _host(address)
    names = sorted(details.get("applications") or {}, key=lambda n: (n == GATEWAY_APP, n))
    return [summarize(details, name, host_fallback=host) for name in names]


def _host(address: str | None) -> str:
    """The host clients reach the proxy at when it binds a wildcard address: the dashboard's, else this node's."""
    from urllib.parse import urlparse

    host = urlparse(address).hostname if is_dashboard(address) else None
    if host is None:
        connect(address)
        import ray

        host = ray.util.get_node_ip_address()
    return host


def scale_changes(
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    target_ongoing_requests: float | None = None,
    replicas: int | None = None,
) -> dict[str, Any]:
    """Autoscaling fields to change; `replicas` pins min and max to one count."""
    if replicas is not None:
        if min_replicas is not None or max_replicas is not None:
            raise SpecError("pass either --replicas or --min/--max, not both.")
        min_replicas = max_replicas = replicas
    named = {"min_replicas": min_replicas, "max_replicas": max_replicas}
    named["target_ongoing_requests"] = target_ongoing_requests
    changes = {k: v for k, v in named.items() if v is not None}
    if not changes:
        raise SpecError("nothing to change: pass --replicas N, or any of --min N, --max N, --target X.")
    return changes


def rescaled(record: AppRecord, changes: dict[str, Any]) -> AppRecord:
    """The record with new autoscaling bounds, checked by the same rules as the spec."""
    from pydantic import ValidationError

    from pipelines.spec.serve import Autoscaling

    # initial_replicas only matters at the first deploy; keeping it could contradict the new bounds.
    fields = {**record.stage.autoscaling.model_dump(), "initial_replicas": None, **changes}
    try:
        return record.with_autoscaling(Autoscaling.model_validate(fields))
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise SpecError(f"cannot scale '{record.name}': {reason}") from None


def scale(name: str, address: str | None = None, timeout_s: float = 600.0, **changes: Any) -> dict[str, Any]:
    """Change an app's autoscaling bounds in place (a lightweight Serve update: no replica restarts)."""
    changes = scale_changes(**changes)
    if is_dashboard(address):
        flags = [f"--{_FLAGS[k]}={v}" for k, v in changes.items()]
        return remote.run(address, ["scale", name, *flags], timeout_s)
    from ray import serve

    connect(address)
    record = rescaled(load_record(name), changes)
    target = serve.RunTarget(target=build_app(record), name=name, route_prefix=record.route_prefix)
    serve.run_many([target], wait_for_applications_running=False)
    save_record(record)
    wait_running(name, timeout_s, log=lambda _: None)
    summary = status(name)
    mark_served(record, summary["endpoint"])
    return summary


def down(name: str, address: str | None = None, timeout_s: float = 600.0) -> dict[str, Any]:
    """Delete the application and its record. With the last application Serve stops too, so its proxy frees the
    HTTP port (a proxy without applications would hold it and answer 404)."""
    if is_dashboard(address):
        return remote.run(address, ["down", name], timeout_s)
    from ray import serve

    connect(address)
    if name not in serve.status().applications:
        host = next((r for r in records().values() if name in r.adapters), None)
        if host is not None:  # a LoRA adapter: its app drops it in place, the base model stays
            detached = host.model_copy(update={"adapters": {k: v for k, v in host.adapters.items() if k != name}})
            deploy(detached, log=lambda _: None)
            return {"name": name, "deleted": True, "adapter_of": host.name}
        raise ClusterError(f"no Serve application named '{name}' (running: {', '.join(_app_names()) or 'none'}).")
    serve.delete(name)
    delete_record(name)
    if not _app_names():  # the gateway alone routes to nothing
        serve.shutdown()
    return {"name": name, "deleted": True}


_FLAGS = {"min_replicas": "min", "max_replicas": "max", "target_ongoing_requests": "target"}

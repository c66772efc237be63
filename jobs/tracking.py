"""Experiment tracking from the job's driver: MLflow and W&B runs that mirror what the stages record.

Only the driver logs. Per submission it opens one parent run (params: the llmctl run id, code version, plan; the
resolved spec and plan as artifacts); per stage that runs, one child run with the stage's resolved config as
params. While a stage runs, a thread reads the stage's TensorBoard scalars (training and RLHF stages write them at
every checkpoint, rank 0 only) and logs the steps not logged yet; at the end the stage's metrics (data funnel, PII
counts, eval rows, probe latencies, ...) and its stats JSON follow. The child run's ids are kept in the stage's
`_state/tracking.json`, so a resubmitted stage continues the same runs and logs no step twice. A cached stage gets
no child run: the parent run links to the run that produced it (its marker records the ids).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from typing import Any

from cluster.tracking import healthy
from pipelines import storage
from pipelines.artifacts import MARKER, STATE_DIR
from pipelines.errors import StageError
from pipelines.plan import Plan, PlannedStage
from pipelines.scalars import stage_scalars
from pipelines.spec import Pipeline
from pipelines.spec.tracking import REGISTERED, MlflowConfig, TrackingConfig, WandbConfig

log = logging.getLogger("llmctl")
STATE_FILE = "tracking.json"
POLL_ENV = "LLMCTL_TRACKING_POLL_S"  # seconds between reads of a running stage's scalars (default 30)
MAX_PARAM = 6000  # MLflow's limit on a parameter value


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay whole (as JSON when they become params)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value} if prefix else {}


def metric_name(name: str) -> str:
    """A metric name MLflow accepts: alphanumerics, '_', '-', '.', ' ', ':' and '/' (the data funnel's rule names
    hold '<' and '>', e.g. 'filter:gopher_quality:alpha_words<0.8')."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric leaves of a stage's metrics, by dotted name."""
    flat = flatten(metrics).items()
    return {metric_name(k): float(v) for k, v in flat if isinstance(v, (int, float)) and not isinstance(v, bool)}


def params(config: dict[str, Any]) -> dict[str, str]:
    """A stage's resolved config as tracker params: dotted names, values as text (JSON for lists)."""
    out = {}
    for key, value in flatten(config).items():
        text = value if isinstance(value, str) else json.dumps(value)
        out[key] = text[:MAX_PARAM]
    return out


class MlflowSink:
    """One MLflow run, written through the official client."""

    def __init__(self, config: MlflowConfig, run_id: str) -> None:
        self.config, self.run_id = config, run_id

    @staticmethod
    def client(config: MlflowConfig):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)

    @classmethod
    def start(cls, config: MlflowConfig, experiment: str, name: str, tags: dict[str, str], resume: str = ""):
        client = cls.client(config)
        with _reported(config):
            if resume and _run_exists(client, resume):
                client.update_run(resume, status="RUNNING")
                client.set_tag(resume, "mlflow.parentRunId", tags.get("mlflow.parentRunId", ""))
                return cls(config, resume)
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            return cls(config, client.create_run(experiment_id, tags=tags, run_name=name).info.run_id)

    def logged_steps(self) -> dict[str, int]:
        """Metric name -> the last step already in this run (a resumed stage continues after it)."""
        client = self.client(self.config)
        with _reported(self.config):
            keys = client.get_run(self.run_id).data.metrics
            return {k: max((m.step for m in client.get_metric_history(self.run_id, k)), default=-1) for k in keys}

    def log(self, points: list[tuple[int, str, float]]) -> None:
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key, value, stamp, step) for step, key, value in points]
        with _reported(self.config):
            for i in range(0, len(metrics), 1000):
                self.client(self.config).log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def params(self, values: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in values.items()]
        with _reported(self.config):
            for i in range(0, len(items), 100):
                self.client(self.config).log_batch(self.run_id, params=items[i : i + 100])

    def tags(self, values: dict[str, str]) -> None:
        with _reported(self.config):
            for key, value in values.items():
                self.client(self.config).set_tag(self.run_id, key, value)

    def artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        with _reported(self.config):
            client = self.client(self.config)
            if os.path.isdir(local_path):
                client.log_artifacts(self.run_id, local_path, artifact_path)
            else:
                client.log_artifact(self.run_id, local_path, artifact_path)

    def register(self, name: str, model_dir: str) -> str:
        """The model directory as a new version of registered model `name`; returns the version."""
        client = self.client(self.config)
        self.artifact(model_dir, "model")
        with _reported(self.config):
            from mlflow.exceptions import MlflowException

            try:
                client.create_registered_model(name)
            except MlflowException as exc:
                if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                    raise
            source = f"{client.get_run(self.run_id).info.artifact_uri}/model"
            return client.create_model_version(name, source, run_id=self.run_id).version

    def end(self, ok: bool) -> None:
        with _reported(self.config):
            self.client(self.config).set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def download_registered(ref: str, config: MlflowConfig, dest_uri: str) -> str:
    """The files of registered model version `ref` (models:/<name>/<version>), copied to `dest_uri` unless an
    earlier run did."""
    from mlflow.artifacts import download_artifacts

    if storage.exists(storage.join(dest_uri, "config.json")):
        return dest_uri if storage.is_remote(dest_uri) else storage.absolute(dest_uri)
    with _reported(config), tempfile.TemporaryDirectory() as tmp:
        name, version = ref[len(REGISTERED) :].split("/")
        source = MlflowSink.client(config).get_model_version_download_uri(name, version)
        local = download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=config.tracking_uri)
        if not os.path.isfile(os.path.join(local, "config.json")):
            raise StageError(f"model: {ref} holds no Hugging Face model (no config.json at its root)")
        if storage.is_remote(dest_uri):
            storage.upload_dir(local, dest_uri)
            return dest_uri
        import shutil

        shutil.copytree(local, storage.absolute(dest_uri), dirs_exist_ok=True)
        return storage.absolute(dest_uri)


def _run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


class _reported:
    """Turns the MLflow client's failures into one message naming the server and the fix."""

    def __init__(self, config: MlflowConfig) -> None:
        self.uri = config.tracking_uri

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, StageError):
            return False
        text = str(exc)
        if any(code in text for code in ("401", "403", "Unauthorized", "Forbidden")):
            raise StageError(
                f"tracking.mlflow: the server at {self.uri} refused the job's credentials. Set "
                "MLFLOW_TRACKING_TOKEN (or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD) in the "
                "environment of the cluster's nodes (not in the spec); the job never carries them."
            ) from None
        raise StageError(f"tracking.mlflow: the tracking server at {self.uri} failed: {text.splitlines()[0]}") from None


class WandbSink:
    """One W&B run (online or offline), written through the official client."""

    def __init__(self, run) -> None:
        self.run = run
        self.run_id = run.id

    @classmethod
    def start(cls, config: WandbConfig, name: str, group: str, job_type: str, resume: str = ""):
        import wandb

        if config.dir:
            os.makedirs(config.dir, exist_ok=True)
        run = wandb.init(
            project=config.project, entity=config.entity or None, mode=config.mode, dir=config.dir or None,
            name=name, group=group, job_type=job_type, id=resume or None, resume="allow" if resume else None,
            reinit="create_new", settings=wandb.Settings(silent=True, console="off"),
        )  # fmt: skip
        return cls(run)

    def logged_steps(self) -> dict[str, int]:
        return {}  # W&B keeps its own step: a resumed run starts after it, and older steps are dropped

    def log(self, points: list[tuple[int, str, float]]) -> None:
        by_step: dict[int, dict[str, float]] = {}
        for step, key, value in points:
            by_step.setdefault(step, {})[key] = value
        for step in sorted(by_step):
            if step >= self.run.step:
                self.run.log(by_step[step], step=step)

    def params(self, values: dict[str, str]) -> None:
        self.run.config.update(values, allow_val_change=True)

    def tags(self, values: dict[str, str]) -> None:
        self.run.summary.update(values)

    def artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        import shutil  # files in the run's directory are part of the run (uploaded online, kept offline)

        shutil.copy(local_path, self.run.dir)

    def register(self, name: str, model_dir: str) -> str:
        return ""  # the MLflow registry is the one llmctl registers in

    def end(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


class RunTracker:
    """The trackers of one submission: parent runs opened on first use, one StageTracker per running stage."""

    def __init__(self, plan: Plan, pipeline: Pipeline, job_id: str = "") -> None:
        self.plan, self.pipeline, self.job_id = plan, pipeline, job_id
        self.parents: dict[tuple, Any] = {}
        self.disabled: set[tuple] = set()

    def stage(self, stage: PlannedStage) -> StageTracker | None:
        config = self.pipeline.tracking_for(stage.name)
        if config is None:
            return None
        sinks = []
        state_uri = storage.join(stage.uri, STATE_DIR, STATE_FILE)
        state = storage.read_json(state_uri) if storage.exists(state_uri) else {}
        for key, start in self._sinks(config, stage, state):
            try:
                sinks.append((key, start()))
            except StageError as exc:
                self._unavailable(config, key, exc)
        if not sinks:
            return None
        register = config.mlflow is not None and config.mlflow.register_model
        tracker = StageTracker(stage, dict(sinks), state_uri, f"{self.plan.pipeline}-{stage.name}" if register else "")
        tracker.resume(state.get("logged", {}))
        return tracker

    def cached(self, stage: PlannedStage, marker: dict[str, Any]) -> None:
        """A skipped stage: the parent runs link to the runs that produced its output."""
        config = self.pipeline.tracking_for(stage.name)
        if config is None:
            return
        produced = marker.get("tracking", {})
        for key, _ in self._sinks(config, stage, {}):
            try:
                parent = self._parent(config, key)
            except StageError as exc:
                self._unavailable(config, key, exc)
                continue
            parent.tags({f"llmctl.stage.{stage.name}": f"cached; produced by run {produced.get(key[0], '?')}"})

    def parent_ids(self) -> dict[str, str]:
        return {key[0]: parent.run_id for key, parent in self.parents.items()}

    def close(self, ok: bool) -> None:
        for parent in self.parents.values():
            parent.end(ok)

    def _sinks(self, config: TrackingConfig, stage: PlannedStage, state: dict[str, Any]):
        """(key, opener) of each tracker the stage logs to."""
        tags = {"llmctl.stage": stage.name, "llmctl.kind": stage.kind, "llmctl.cache_key": stage.cache_key}
        if config.mlflow is not None:
            key = ("mlflow", config.mlflow.tracking_uri, self._experiment(config.mlflow))
            if key not in self.disabled:

                def mlflow_child(key=key, mlflow=config.mlflow):
                    parent = self._parent(config, key)
                    child_tags = {**tags, "mlflow.parentRunId": parent.run_id}
                    return MlflowSink.start(mlflow, key[2], stage.name, child_tags, resume=state.get("mlflow", ""))

                yield key, mlflow_child
        if config.wandb is not None:
            key = ("wandb", config.wandb.project, config.wandb.entity, config.wandb.mode, config.wandb.dir)
            if key not in self.disabled:

                def wandb_child(key=key, wandb=config.wandb):
                    self._parent(config, key)
                    return WandbSink.start(wandb, stage.name, self.plan.run_id, stage.kind, state.get("wandb", ""))

                yield key, wandb_child

    def _experiment(self, config: MlflowConfig) -> str:
        return config.experiment or self.plan.pipeline

    def _parent(self, config: TrackingConfig, key: tuple):
        if key in self.parents:
            return self.parents[key]
        name = f"{self.plan.run_id}" + (f" ({self.job_id})" if self.job_id else "")
        if key[0] == "mlflow":
            if not healthy(key[1]):  # before the client's retries, which take minutes against a dead address
                raise StageError(
                    f"tracking.mlflow.tracking_uri: no MLflow server answers at {key[1]} from this cluster's "
                    "nodes. Start it, or point tracking_uri at an address the nodes can reach."
                )
            parent = MlflowSink.start(config.mlflow, key[2], name, {"llmctl.run_id": self.plan.run_id})
        else:
            parent = WandbSink.start(config.wandb, name, self.plan.run_id, "pipeline")
        parent.params({"run_id": self.plan.run_id, "pipeline": self.plan.pipeline,
                       "code_version": self.plan.code_version, "job_id": self.job_id,
                       "stages": ",".join(s.name for s in self.plan.stages)})  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            for name, body in (("spec.json", self.plan.spec), ("plan.json", self.plan.to_json())):
                with open(os.path.join(tmp, name), "w") as f:
                    json.dump(body, f, indent=1, default=str)
                parent.artifact(os.path.join(tmp, name))
        self.parents[key] = parent
        return parent

    def _unavailable(self, config: TrackingConfig, key: tuple, exc: StageError) -> None:
        if config.required:
            raise exc
        log.warning(f"tracking: {exc} (tracking.required is false: the run goes on without {key[0]})")
        self.disabled.add(key)


class StageTracker:
    """A running stage's child runs: scalars as they appear, then the stage's metrics, stats and model."""

    def __init__(self, stage: PlannedStage, sinks: dict[tuple, Any], state_uri: str, register_as: str = "") -> None:
        self.stage, self.sinks, self.state_uri, self.register_as = stage, sinks, state_uri, register_as
        self.logged: dict[str, int] = {}  # metric -> last step logged
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def ids(self) -> dict[str, str]:
        return {key[0]: sink.run_id for key, sink in self.sinks.items()}

    def resume(self, saved: dict[str, int]) -> None:
        """Steps logged by an earlier attempt of this stage: what its state file saved and what MLflow holds."""
        for logged in (saved, *(sink.logged_steps() for sink in self.sinks.values())):
            for metric, step in logged.items():
                self.logged[metric] = max(step, self.logged.get(metric, -1))
        self.save()

    def save(self) -> None:
        storage.write_json(self.state_uri, {**self.ids(), "logged": self.logged})

    def start(self, config: dict[str, Any]) -> None:
        self._each(lambda sink: sink.params(params(config)))
        self.thread = threading.Thread(target=self._follow, name="llmctl-tracking", daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        interval = float(os.environ.get(POLL_ENV, "30"))
        while not self.stop.wait(interval):
            try:
                self.poll()
            except Exception as exc:  # a tracker outage must not kill the stage; the final poll reports it
                log.warning(f"[{self.stage.name}] tracking: {exc}")

    def poll(self) -> int:
        """Log the stage's scalars not logged yet; returns the last step seen."""
        with self.lock:
            scalars, _ = stage_scalars(self.stage.uri)
            points = [(step, metric_name(key), value) for key, series in scalars.items() for step, value in series
                      if step > self.logged.get(metric_name(key), -1)]  # fmt: skip
            if points:
                self._each(lambda sink: sink.log(points))
                for step, key, _ in points:
                    self.logged[key] = max(step, self.logged.get(key, -1))
                self.save()
            return max(self.logged.values(), default=0)

    def finish(self, marker: dict[str, Any] | None) -> str:
        """The stage ended: its last scalars, then (when it succeeded) its metrics, its stats and marker as
        artifacts, and with register_model its model/ as a new version of '<pipeline>-<stage>' (returned)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        step = self.poll()
        version = ""
        if marker is not None:
            metrics = numbers(marker.get("metrics", {}))
            final = [(step, key, value) for key, value in metrics.items() if self.logged.get(key, -1) < step]
            self._each(lambda sink: sink.log(final))
            with tempfile.TemporaryDirectory() as tmp:
                for name in ("stats.json", MARKER):
                    if storage.exists(storage.join(self.stage.uri, name)):
                        local = os.path.join(tmp, name + ("" if name.endswith(".json") else ".json"))
                        with open(local, "w") as f:
                            f.write(storage.read_text(storage.join(self.stage.uri, name)))
                        self._each(lambda sink, local=local: sink.artifact(local))
            version = self._register(self.register_as) if self.register_as else ""
        self._each(lambda sink: sink.end(marker is not None))
        return version

    def _register(self, name: str) -> str:
        model = storage.join(self.stage.uri, "model")
        sink = next((s for k, s in self.sinks.items() if k[0] == "mlflow"), None)
        if sink is None or not storage.exists(storage.join(model, "config.json")):
            return ""
        with storage.local_copy(model) as local:
            version = sink.register(name, local)
        log.info(f"[{self.stage.name}] registered model {name} version {version}")
        return version

    def _each(self, call) -> None:
        for sink in self.sinks.values():
            call(sink)

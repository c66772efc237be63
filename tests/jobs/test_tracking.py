"""The driver's trackers against a real MLflow server and W&B in offline mode, without Ray: a stage directory
with TensorBoard files written by the training loop's own writer stands in for a running stage."""

from __future__ import annotations

import os
import time

import pytest

from jobs.tracking import RunTracker, flatten, numbers, params
from jobs.train.metrics import TensorBoard
from pipelines import load
from pipelines import plan as planning
from pipelines.artifacts import MARKER
from pipelines.spec import Pipeline


def pipeline_file(tmp_path, tracking: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(f"""
name: retried  # its own experiment: the session server also holds the job test's
storage: {tmp_path}/runs
tracking: {tracking}
stages:
  pretrain:
    kind: pretrain
    data: {tmp_path}/text
    tokenizer: {tmp_path}/tok
    model: {{preset: tiny}}
""")
    return str(path)


def make_plan(tmp_path, tracking: str):
    os.makedirs(tmp_path / "text", exist_ok=True)
    os.makedirs(tmp_path / "tok", exist_ok=True)
    p = planning.build(load.load(pipeline_file(tmp_path, tracking)), check_inputs=False)
    return p, Pipeline.model_validate(p.spec)


def write_steps(stage_uri: str, steps: range, offset: float = 0.0) -> None:
    board = TensorBoard(os.path.join(stage_uri, "_state", "tensorboard"), enabled=True)
    for step in steps:
        board.log(step, {"loss": 10.0 - step / 10 + offset, "lr": 0.001})
    board.close()


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_metric_names_and_params_are_flat():
    assert flatten({"rows": {"kept": 3, "in": 5}, "loss": 1.5}) == {"rows.kept": 3, "rows.in": 5, "loss": 1.5}
    assert numbers({"rows": {"kept": 3}, "ok": True, "name": "x", "mfu": None}) == {"rows.kept": 3.0}
    assert numbers({"by_reason": {"filter:words<0.8": 2}}) == {"by_reason.filter:words_0.8": 2.0}, "as MLflow allows"
    assert params({"model": {"preset": "tiny"}, "data": ["a", "b"]}) == {"model.preset": "tiny", "data": '["a", "b"]'}


@pytest.mark.slow
def test_a_resumed_stage_continues_its_child_run_without_logging_a_step_twice(mlflow_server, tmp_path):
    p, pipeline = make_plan(tmp_path, f"{{mlflow: {{tracking_uri: {mlflow_server}, register_model: true}}}}")
    stage = p.stages[0]
    first = RunTracker(p, pipeline, job_id="job-1")
    tracking = first.stage(stage)
    tracking.start(stage.config)
    write_steps(stage.uri, range(10, 30, 10))
    assert tracking.poll() == 20
    child = tracking.ids()["mlflow"]
    first.close(ok=False)  # the job was killed here: no finish, the stage has no marker

    # Resubmitted: training resumes from the step-10 checkpoint and logs step 20 again, with another value.
    write_steps(stage.uri, range(20, 50, 10), offset=0.5)
    second = RunTracker(p, pipeline, job_id="job-2")
    tracking = second.stage(stage)
    assert tracking.ids()["mlflow"] == child, "the resumed stage continues its child run"
    tracking.start(stage.config)
    model = os.path.join(stage.uri, "model")
    os.makedirs(model)
    open(os.path.join(model, "config.json"), "w").write('{"model_type": "llama"}')
    marker = {"metrics": {"tokens_per_s": 123.0, "loss": 5.6, "eval": {"loss": 6.0}}, "seconds": 3}
    open(os.path.join(stage.uri, MARKER), "w").write("{}")
    version = tracking.finish(marker)
    second.close(ok=True)

    mlflow = client(mlflow_server)
    history = mlflow.get_metric_history(child, "loss")
    assert sorted(m.step for m in history) == [10, 20, 30, 40], "no step logged twice"
    assert {m.step: m.value for m in history}[20] == pytest.approx(10.0 - 2 + 0), "the first value of step 20 stays"
    assert [m.step for m in mlflow.get_metric_history(child, "tokens_per_s")] == [40]
    assert [m.step for m in mlflow.get_metric_history(child, "eval.loss")] == [40]
    run = mlflow.get_run(child)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.preset"] == "tiny" and run.data.tags["llmctl.stage"] == "pretrain"
    parents = {r.info.run_id: r for r in mlflow.search_runs([run.info.experiment_id], "tags.`llmctl.run_id` != ''")}
    assert run.data.tags["mlflow.parentRunId"] in parents and len(parents) == 2, "one parent run per submission"
    assert {r.data.params["job_id"] for r in parents.values()} == {"job-1", "job-2"}
    assert {a.path for a in mlflow.list_artifacts(child)} >= {"_SUCCESS.json", "model"}
    registered = mlflow.get_model_version("retried-pretrain", version)
    assert registered.run_id == child
    # ... which a serve stage reads back as models:/<name>/<version>
    from jobs.tracking import download_registered

    served = download_registered(f"models:/retried-pretrain/{version}", pipeline.tracking.mlflow, str(tmp_path / "dl"))
    assert open(os.path.join(served, "config.json")).read() == '{"model_type": "llama"}'


def wandb_history(wandb_dir: str, run_id: str) -> list[dict]:
    """History rows of a W&B run, read back from its offline transaction logs by W&B's own reader."""
    import glob
    import json
    import subprocess
    import sys

    rows = []
    for run_dir in sorted(glob.glob(os.path.join(wandb_dir, "wandb", f"offline-run-*-{run_id}"))):
        wandb = os.path.join(os.path.dirname(sys.executable), "wandb")
        out = subprocess.run([wandb, "leet", "inspect", "--json", run_dir], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        rows += [r["history"]["item"] for r in records if r.get("type") == "history"]
    return rows


@pytest.mark.slow
def test_wandb_offline_runs_hold_the_same_history_and_a_retried_stage_skips_logged_steps(tmp_path):
    wandb_dir = tmp_path / "wandb"
    p, pipeline = make_plan(tmp_path, f"{{wandb: {{project: llmctl-test, mode: offline, dir: {wandb_dir}}}}}")
    stage = p.stages[0]
    first = RunTracker(p, pipeline, job_id="job-1")
    tracking = first.stage(stage)
    tracking.start(stage.config)
    write_steps(stage.uri, range(10, 30, 10))
    tracking.finish(None)  # the stage failed after logging steps 10 and 20
    first.close(ok=False)
    child = tracking.ids()["wandb"]
    # W&B names an offline run's directory by the second it starts: a resumed run within the same second would
    # share the first one's directory (a real resubmit is seconds later).
    first_second = int(time.time())
    while int(time.time()) == first_second:
        time.sleep(0.05)

    write_steps(stage.uri, range(20, 50, 10), offset=0.5)
    second = RunTracker(p, pipeline, job_id="job-2")
    tracking = second.stage(stage)
    assert tracking.ids()["wandb"] == child, "the retried stage continues its W&B run"
    tracking.start(stage.config)
    open(os.path.join(stage.uri, MARKER), "w").write("{}")
    tracking.finish({"metrics": {"tokens_per_s": 5.0}})
    second.close(ok=True)

    rows = wandb_history(str(wandb_dir), child)
    assert [r["_step"] for r in rows if "loss" in r] == [10, 20, 30, 40], "each step once, in order"
    assert [r["loss"] for r in rows if "loss" in r][:2] == [9.0, 8.0]
    assert [r["_step"] for r in rows if "tokens_per_s" in r] == [40]
    assert os.path.exists(next(iter(wandb_dir.glob(f"wandb/offline-run-*-{child}/files/_SUCCESS.json"))))


AUTOSCALING = "{min_replicas: 1, max_replicas: 1, target_ongoing_requests: 2}"


def serve_spec(tmp_path, model: str, tracking: str = "") -> str:
    path = tmp_path / "serve.yaml"
    path.write_text(f"""
name: served
storage: {tmp_path}/runs
{tracking}
stages:
  serve: {{kind: serve, model: "{model}", autoscaling: {AUTOSCALING}}}
""")
    return str(path)


def test_a_registered_model_needs_a_tracking_server_and_a_version(tmp_path):
    from pipelines.errors import SpecError

    with pytest.raises(SpecError) as err:
        load.load(serve_spec(tmp_path, "models:/tiny-sft/1"))
    assert "stages.serve.model: 'models:/tiny-sft/1' is a version in an MLflow model registry; set " \
        "tracking.mlflow.tracking_uri to the server that holds it." in str(err.value)
    tracking = "tracking: {mlflow: {tracking_uri: 'http://127.0.0.1:5000'}}"
    with pytest.raises(SpecError) as err:
        load.load(serve_spec(tmp_path, "models:/tiny-sft/latest", tracking))
    assert "write models:/<name>/<version>, e.g. models:/tiny-sft/1" in str(err.value)
    p = planning.build(load.load(serve_spec(tmp_path, "models:/tiny-sft/3", tracking)))
    assert p.stages[0].config["model"] == "models:/tiny-sft/3", "not taken for a relative path"
    with pytest.raises(SpecError) as err:
        load.load(serve_spec(tmp_path, "x", "tracking: {mlflow: {tracking_uri: ./mlruns}}"))
    assert "'./mlruns' is not a tracking server: give its http(s) address" in str(err.value)


def test_tracking_is_not_part_of_the_cache_keys(tmp_path):
    plain, _ = make_plan(tmp_path, "null")
    tracked, _ = make_plan(tmp_path, "{mlflow: {tracking_uri: 'http://127.0.0.1:1'}}")
    assert [s.cache_key for s in plain.stages] == [s.cache_key for s in tracked.stages]
    assert plain.run_id != tracked.run_id, "the run record holds the trackers it logged to"


def test_submit_refuses_an_unreachable_tracking_server_naming_it(tmp_path):
    from click.testing import CliRunner

    from cli.main import main
    from tests.conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    spec = pipeline_file(tmp_path, f"{{mlflow: {{tracking_uri: '{uri}'}}}}")
    for d, name in (("text", "a.jsonl"), ("tok", "tokenizer.json")):
        os.makedirs(tmp_path / d)
        (tmp_path / d / name).write_text("{}")
    result = CliRunner().invoke(main, ["submit", spec, "--address", "http://127.0.0.1:1"])
    assert result.exit_code == 2
    assert f"tracking.mlflow.tracking_uri: no MLflow server answers at {uri}. Start one with `llmctl tracking up`" \
        in result.output


def test_in_the_job_an_unreachable_server_fails_the_stage_unless_tracking_is_optional(tmp_path, caplog):
    from pipelines.errors import StageError
    from tests.conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    p, pipeline = make_plan(tmp_path, f"{{mlflow: {{tracking_uri: '{uri}'}}}}")
    with pytest.raises(StageError) as err:
        RunTracker(p, pipeline).stage(p.stages[0])
    assert str(err.value).startswith("tracking.mlflow.tracking_uri: ")
    assert f"no MLflow server answers at {uri} from this cluster's nodes" in str(err.value)

    p, pipeline = make_plan(tmp_path, f"{{mlflow: {{tracking_uri: '{uri}'}}, required: false}}")
    tracker = RunTracker(p, pipeline)
    assert tracker.stage(p.stages[0]) is None, "the stage runs untracked"
    assert tracker.stage(p.stages[0]) is None
    warnings = [r.message for r in caplog.records if "tracking.required is false" in r.message]
    assert len(warnings) == 1, "one warning, not one per stage"


def test_tracking_status_names_the_address_and_how_to_start_it(tmp_path):
    from click.testing import CliRunner

    from cli.main import main
    from tests.conftest import free_port

    port = free_port()
    result = CliRunner().invoke(main, ["tracking", "status", "--storage", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 1
    down = f"MLflow tracking server: down at http://127.0.0.1:{port} (start it with `llmctl tracking up`)"
    assert down in result.output
    result = CliRunner().invoke(main, ["tracking", "down", "--storage", str(tmp_path), "--port", str(port)])
    assert result.output.strip() == "MLflow tracking server was not running"

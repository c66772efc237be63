"""The driver's trackers against a real MLflow server and W&B in offline mode, without Ray: a stage directory
with TensorBoard files written by the training loop's own writer stands in for a running stage."""

from __future__ import annotations

import os

import pytest

from jobs.tracking import RunTracker, flatten, numbers, params
from jobs.train.metrics import TensorBoard
from pipelines import load, plan as planning
from pipelines.artifacts import MARKER
from pipelines.spec import Pipeline


def pipeline_file(tmp_path, tracking: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(f"""
name: tracked
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
    registered = mlflow.get_model_version("tracked-pretrain", version)
    assert registered.run_id == child

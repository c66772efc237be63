"""A tracked pipeline submitted as a Ray job, logging to a real MLflow server: the tiny pipeline's first four
stages (curate -> tokenizer -> pretrain -> sft, a few steps each), then a resubmit that finds them all cached."""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from cli.main import main
from cluster import jobs
from pipelines import storage
from pipelines.scalars import stage_scalars

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SECRET = "llmctl-test-token-5c0ffee"  # a credential in the submitting shell that must travel nowhere


def spec_file(tmp_path, tracking_uri: str) -> str:
    from jobs.demo.chat import write_demo_chat
    from jobs.demo.corpus import write_demo_corpus

    write_demo_corpus(str(tmp_path / "demo"), n_docs=200, seed=3)
    write_demo_chat(str(tmp_path / "chat"), n_sft=100, n_pairs=10, seed=3)
    path = tmp_path / "tracked.yaml"
    small = "optim: {warmup_steps: 1}, scaling: {num_workers: 1}"
    path.write_text(textwrap.dedent(f"""
        name: tracked
        storage: {tmp_path}/runs
        tracking: {{mlflow: {{tracking_uri: "{tracking_uri}", register_model: true}}}}
        stages:
          curate: {{kind: data, inputs: ["{tmp_path}/demo/*.jsonl"], minhash: null, pii: null}}
          tokenizer: {{kind: tokenizer, data: curate, vocab_size: 512}}
          pretrain: {{kind: pretrain, data: curate, tokenizer: tokenizer, model: {{preset: tiny}}, {small},
                      schedule: {{steps: 4, seq_len: 64, micro_batch_size: 4, eval_every: 4, checkpoint_every: 4,
                                  log_every: 1}}}}
          sft: {{kind: sft, model: pretrain, data: "{tmp_path}/chat/sft.jsonl", {small},
                 schedule: {{steps: 2, seq_len: 64, micro_batch_size: 4, eval_every: 2, checkpoint_every: 2,
                             log_every: 1}}}}
        """))
    return str(path)


def test_a_tracked_run_logs_a_parent_and_stage_runs_registers_models_and_a_cached_resubmit_only_links(
    ray_head, mlflow_server, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    spec = spec_file(tmp_path, mlflow_server)
    first = CliRunner().invoke(main, ["submit", spec, "--address", ray_head.dashboard_url], catch_exceptions=False)
    assert first.exit_code == 0, first.output

    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tracked").experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if "llmctl.run_id" in r.data.tags]
    children = {r.data.tags["llmctl.stage"]: r for r in runs if "llmctl.stage" in r.data.tags}
    assert len(parents) == 1 and set(children) == {"curate", "tokenizer", "pretrain", "sft"}
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())
    assert all(c.info.status == "FINISHED" for c in children.values())
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"spec.json", "plan.json", "report.html"}
    assert f"(also on MLflow run {parent.info.run_id})" in first.output

    markers = {s: storage.read_json(f) for f in storage.list_files(f"{tmp_path}/runs", "_SUCCESS")
               for s in [storage.read_json(f)["stage"]]}  # fmt: skip
    for stage, child in children.items():
        assert markers[stage]["tracking"] == {"mlflow": child.info.run_id}, "the marker names the run that made it"
    # Each training stage's history is its own metrics, step for step.
    for stage, steps in (("pretrain", 4), ("sft", 2)):
        uri = storage.join(f"{tmp_path}/runs/tracked/{stage}", markers[stage]["cache_key"])
        scalars, _ = stage_scalars(uri)
        run_id = children[stage].info.run_id
        history = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
        assert [m.step for m in history] == [step for step, _ in scalars["loss"]]
        assert [m.value for m in history] == pytest.approx([value for _, value in scalars["loss"]])
        assert max(m.step for m in history) == steps
        assert children[stage].data.params["schedule.steps"] == str(steps)
        version = client.get_model_version(f"tracked-{stage}", "1")
        assert version.run_id == run_id, "the exported model is a registered version linked to its run"
    rows = markers["curate"]["metrics"]["rows"]
    assert children["curate"].data.metrics["rows.in"] == rows["in"], "the data funnel is logged"
    assert children["pretrain"].data.params["model.preset"] == "tiny"

    second = CliRunner().invoke(main, ["submit", spec, "--address", ray_head.dashboard_url], catch_exceptions=False)
    assert second.exit_code == 0, second.output
    runs = client.search_runs([experiment])
    parents = [r for r in runs if "llmctl.run_id" in r.data.tags]
    assert len(parents) == 2 and len([r for r in runs if "llmctl.stage" in r.data.tags]) == 4, "no new stage runs"
    resubmit = next(p for p in parents if p.info.run_id != parent.info.run_id)
    for stage, child in children.items():
        assert resubmit.data.tags[f"llmctl.stage.{stage}"] == f"cached; produced by run {child.info.run_id}"

    target = jobs.Target(ray_head.dashboard_url, is_local=False)
    for job in jobs.jobs_of(target, markers["curate"]["run_id"]):
        assert SECRET not in jobs.logs(target, job.submission_id)
        assert SECRET not in repr(job), "nor in the job's metadata, entrypoint or runtime_env"
    assert SECRET not in first.output + second.output

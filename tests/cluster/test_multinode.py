"""A head and a worker node on this machine (the `two_nodes` fixture): placement by node label, and a pipeline
whose artifacts live on S3 (moto in server mode on loopback, with authentication enforced) running across both
nodes, with credentials the nodes find themselves and that appear in nothing llmctl shows or stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from cli.main import main
from cluster import jobs, multinode
from pipelines import storage
from tests.conftest import ROOT, s3_server

pytestmark = pytest.mark.cluster

WHERE = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)

@ray.remote(num_cpus=1)
def node_of_task():
    return ray.get_runtime_context().get_node_id()

@ray.remote(num_cpus=1)
class Probe:
    def node(self):
        return ray.get_runtime_context().get_node_id()

on = lambda role: {"llmctl.io/role": role}
print(json.dumps({
    "worker_task": ray.get(node_of_task.options(label_selector=on("worker")).remote()),
    "head_task": ray.get(node_of_task.options(label_selector=on("head")).remote()),
    "worker_actor": ray.get(Probe.options(label_selector=on("worker")).remote().node.remote()),
    "by_resource": ray.get(node_of_task.options(resources={"llmctl_worker_0": 1}).remote()),
}))
"""


def test_work_selected_by_node_label_runs_on_that_node(two_nodes):
    nodes = multinode.alive_nodes(two_nodes.dashboard_url)
    by_role = {n["labels"][multinode.ROLE_LABEL]: n for n in nodes}
    assert set(by_role) == {"head", "worker"} and len(nodes) == 2
    head, worker = by_role["head"]["node_id"], by_role["worker"]["node_id"]
    assert by_role["worker"]["resources_total"]["llmctl_worker_0"] == 1
    assert "llmctl_worker_0" not in by_role["head"]["resources_total"]

    out = subprocess.run([sys.executable, "-c", WHERE, two_nodes.gcs_address], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    placed = json.loads(out.stdout.strip().splitlines()[-1])
    assert placed == {"worker_task": worker, "head_task": head, "worker_actor": worker, "by_resource": worker}


# ---- S3 artifacts and credential hygiene ---------------------------------------------------------------------


@dataclass(frozen=True)
class S3:
    endpoint: str
    key_id: str
    secret: str
    credentials_file: str


SETUP_REQUESTS = 4  # create_user, put_user_policy, create_access_key, create_bucket


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto on loopback that refuses unsigned or wrongly signed requests, an IAM user allowed s3:*, and that
    user's keys in a shared-credentials file (the only place the secret is written)."""
    import boto3
    from botocore.exceptions import ClientError

    # moto counts requests: the first SETUP_REQUESTS go unchecked, every later one must be signed by a known key.
    with s3_server(INITIAL_NO_AUTH_ACTION_COUNT=str(SETUP_REQUESTS)) as endpoint:
        setup = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "setup",
                 "aws_secret_access_key": "setup"}  # fmt: skip
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="llmctl")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="llmctl", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="llmctl")["AccessKey"]
        boto3.client("s3", **setup).create_bucket(Bucket="llm")
        with pytest.raises(ClientError, match="InvalidAccessKeyId"):
            boto3.client("s3", **setup).list_objects_v2(Bucket="llm")  # enforcement is on from here
        creds = tmp_path_factory.mktemp("aws") / "credentials"
        creds.write_text(f"[default]\naws_access_key_id = {key['AccessKeyId']}\n"
                         f"aws_secret_access_key = {key['SecretAccessKey']}\n")  # fmt: skip
        yield S3(endpoint, key["AccessKeyId"], key["SecretAccessKey"], str(creds))


@pytest.fixture(scope="module")
def two_nodes_env(s3):
    """What an instance role gives a real node: credentials it finds through the AWS chain on its own. No endpoint
    and no keys in the environment: the endpoint must come with the job, the keys must not."""
    absent = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_SESSION_TOKEN", "AWS_PROFILE")  # fmt: skip
    return {"AWS_SHARED_CREDENTIALS_FILE": s3.credentials_file, "AWS_CONFIG_FILE": os.devnull,
            "AWS_REGION": "us-east-1", **dict.fromkeys(absent)}  # fmt: skip


@pytest.fixture
def client_env(s3, monkeypatch):
    """The submitting shell: its own credentials from the same chain, and the endpoint."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", s3.credentials_file)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")


LOSES_NODES = """
name: s3run
storage: s3://llm/runs
stages:
  curate: {kind: data, inputs: ["s3://llm/corpus/*.jsonl"], minhash: null}
  tokenizer: {kind: tokenizer, data: curate, vocab_size: 512}
  pretrain:
    kind: pretrain
    data: curate
    tokenizer: tokenizer
    model: {preset: tiny}
    optim: {lr: 3.0e-3, warmup_steps: 2}
    schedule: {steps: 60, seq_len: 64, micro_batch_size: 8, eval_every: 30, checkpoint_every: 10, log_every: 10}
    scaling: {num_workers: 2, strategy: SPREAD}
    failure: {max_failures: 2}
"""


def test_pipeline_on_s3_survives_losing_a_worker_node_in_curation_and_in_pretraining(
    two_nodes, s3, client_env, tmp_path, monkeypatch
):
    """A data -> tokenizer -> pretrain run whose every artifact lives on S3 loses its worker node twice: mid-way
    through curation (Ray Data re-runs the lost tasks; the funnel still counts every row once) and after the first
    pretraining checkpoint (Ray Train restarts the group on the nodes left and resumes from that checkpoint on S3).
    Credentials reach the nodes through the AWS chain and appear in nothing llmctl shows or stores."""
    from ray.job_submission import JobSubmissionClient

    from jobs.demo.corpus import write_demo_corpus

    manifest = write_demo_corpus(str(tmp_path / "corpus"), n_docs=300, seed=3)
    storage.upload_dir(str(tmp_path / "corpus"), "s3://llm/corpus")
    spec = tmp_path / "s3.yaml"
    spec.write_text(LOSES_NODES)
    monkeypatch.chdir(tmp_path)
    target = jobs.Target(two_nodes.dashboard_url, is_local=False)
    cluster = two_nodes
    started = time.monotonic()
    try:
        submitted = CliRunner().invoke(main, ["submit", str(spec), "--address", cluster.dashboard_url, "--no-wait"],
                                       catch_exceptions=False)  # fmt: skip
        assert submitted.exit_code == 0, submitted.output
        [job] = jobs.list_runs(target)  # the only run on this cluster
        job_id = job.submission_id

        worker = _worker_node_id(cluster)
        _wait(lambda: _running_tasks_on(cluster, worker, job_id), target, job_id, "a curation task on the worker")
        assert multinode.main(["lose-worker", "--root", cluster.root]) == 0  # as a user would, from a shell
        print(f"worker node lost during curation at {time.monotonic() - started:.0f}s")
        assert not storage.list_files("s3://llm/runs/s3run/curate", "_SUCCESS"), "the node went after curation"
        assert multinode.main(["add-worker", "--root", cluster.root]) == 0  # the replacement an autoscaler brings
        cluster = multinode.load(cluster.root)

        checkpoints = "s3://llm/runs/s3run/pretrain"
        _wait(lambda: storage.list_files(checkpoints, "checkpoint_manager_snapshot.json"), target, job_id,
              "the first pretraining checkpoint on S3")  # fmt: skip
        worker = _worker_node_id(cluster)
        ranks = _train_worker_nodes(cluster)
        assert worker in ranks, f"SPREAD puts a Ray Train rank on the worker node: {ranks}"
        cluster = multinode.lose_worker(cluster)
        print(f"worker node lost during pretraining at {time.monotonic() - started:.0f}s")
        _wait(lambda: jobs.status(target, job_id) == "SUCCEEDED", target, job_id, "the run to finish")
        print(f"run finished at {time.monotonic() - started:.0f}s")
        print("\n".join(line for line in jobs.logs(target, job_id).splitlines() if line[:1].isdigit()))
    finally:
        if not cluster.workers:  # later tests in this module get two nodes again
            multinode.add_worker(cluster)

    done = {(m := storage.read_json(uri))["stage"]: m for uri in storage.list_files("s3://llm/runs", "_SUCCESS")}
    assert set(done) == {"curate", "tokenizer", "pretrain"}
    rows = done["curate"]["metrics"]["rows"]
    assert rows["in"] == manifest["expected"]["rows_in"], "every input line is counted once"
    assert rows["out"] == manifest["expected"]["kept"] + manifest["expected"]["near_duplicates"]  # minhash is off
    trained = done["pretrain"]["metrics"]
    print({k: trained[k] for k in ("step", "resumed_from_step", "steps_run", "eval_loss")})
    assert (trained["step"], trained["world_size"]) == (60, 2)
    assert 10 <= trained["resumed_from_step"] < 60, "the restarted group resumes from a checkpoint on S3"
    assert trained["steps_run"] == 60 - trained["resumed_from_step"]
    pretrain_uri = storage.list_files(checkpoints, "_SUCCESS")[0].rsplit("/", 1)[0]
    assert storage.exists(f"{pretrain_uri}/model/model.safetensors"), "the export is on S3"
    assert not (tmp_path / "runs").exists(), "nothing was written locally"

    info = JobSubmissionClient(cluster.dashboard_url).get_job_info(job_id)
    assert info.runtime_env["env_vars"]["AWS_ENDPOINT_URL"] == s3.endpoint, "the endpoint travels with the job"
    shown = {
        "job info (runtime_env, metadata, entrypoint)": repr(info),
        "job log": jobs.logs(target, job_id),
        "llmctl submit output": submitted.output,
        **{uri: _read_bytes(uri).decode("latin-1") for uri in storage.list_files("s3://llm/runs")},
    }
    assert any(uri.endswith("/spec.yaml") for uri in shown) and any(uri.endswith("/plan.json") for uri in shown)
    assert any("/_state/" in uri for uri in shown), "Ray Train's checkpoints are among what was searched"
    for where, text in shown.items():
        assert s3.secret not in text, f"the secret access key appears in {where}"
        assert s3.key_id not in text, f"the access key id appears in {where}"


def _wait(condition, target: jobs.Target, job_id: str, what: str, timeout: float = 600) -> None:
    """Poll `condition` until it holds; fail early, with the job's log, if the job ends first (the condition is
    asked once more then: the job may have ended, as the condition wanted, between the two reads)."""
    deadline = time.monotonic() + timeout
    while not condition():
        state = jobs.status(target, job_id)
        if state in jobs.TERMINAL:
            assert condition(), f"the job ended {state} before {what}:\n{jobs.logs(target, job_id)[-3000:]}"
            return
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f}s"
        time.sleep(0.2)


def _worker_node_id(cluster: multinode.MultiNode) -> str:
    resource = cluster.workers[0].resources
    [node] = [n for n in multinode.alive_nodes(cluster.dashboard_url) if set(resource) <= set(n["resources_total"])]
    return node["node_id"]


def _running_tasks_on(cluster: multinode.MultiNode, node_id: str, job_id: str) -> list:
    """The job's Ray Data tasks running on `node_id` now (the state API names the job by its Ray job id)."""
    from ray.util.state import list_tasks

    running = list_tasks(address=cluster.dashboard_url, filters=[("node_id", "=", node_id), ("state", "=", "RUNNING")])
    return [t for t in running if t.type == "NORMAL_TASK"]


def _train_worker_nodes(cluster: multinode.MultiNode) -> list[str]:
    from ray.util.state import list_actors

    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    return [a.node_id for a in list_actors(address=cluster.dashboard_url, filters=alive)]


def _read_bytes(uri: str) -> bytes:
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


# ---- workers spread across nodes when the spec asks ----------------------------------------------------------

SPREAD = """
import json, sys, ray

from cluster.worker_group import Worker, WorkerGroup, register
from pipelines.spec.base import Scaling

ray.init(address=sys.argv[1], log_to_driver=False)
spread = Scaling(num_workers=2, cpus_per_worker=1, strategy="STRICT_SPREAD")


class Where(Worker):
    @register(dispatch="all", collect="list")
    def node(self):
        return ray.get_runtime_context().get_node_id()


group = WorkerGroup(Where, spread.num_workers, {"CPU": spread.cpus_per_worker}, strategy=spread.strategy)
print(json.dumps({"group_nodes": group.node(), "group_sum": group.all_reduce_sum(1.0)}))
group.shutdown()
"""


def test_spread_strategy_puts_worker_group_ranks_on_different_nodes(two_nodes):
    """`scaling.strategy: STRICT_SPREAD` (the spec field every RLHF role has) places WorkerGroup ranks one per node,
    and their gloo process group spans both nodes. Ray Train ranks under SPREAD: the node-loss test above."""
    nodes = {n["node_id"] for n in multinode.alive_nodes(two_nodes.dashboard_url)}
    out = subprocess.run([sys.executable, "-c", SPREAD, two_nodes.gcs_address], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    placed = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(placed["group_nodes"]) == nodes, "one RLHF worker-group rank per node"
    assert placed["group_sum"] == [2.0, 2.0]


def test_every_node_of_the_harness_gets_its_own_haproxy_ports(tmp_path):
    """Each node's HAProxy binds a stats and a Prometheus port on every interface; on one machine, nodes (and the
    test session's own head) sharing them would leave all but the first HAProxy unable to start."""
    from cluster import local

    cluster = multinode.plan(str(tmp_path), workers=2)
    ports = [node.env[name] for node in (cluster.head, *cluster.workers) for name in local.HAPROXY_PORT_ENV]
    assert len(ports) == 6 and len(set(ports)) == 6
    assert multinode.MultiNode.from_json(json.loads(json.dumps(cluster.to_json()))) == cluster  # kept in cluster.json
    node_env = local._node_env("/tmp/x", "127.0.0.1:1", cluster.head.env)
    assert all(node_env[name] == cluster.head.env[name] for name in local.HAPROXY_PORT_ENV)

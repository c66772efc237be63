"""GPU placement proven without a GPU: two worker nodes that declare four H100s each (and a CPU-only head), and
`llmctl submit --dry-run`, which reserves every stage's real placement groups there, records where each role
landed and releases them, touching no CUDA."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections import Counter

import pytest

from cluster import multinode, runs
from pipelines.errors import CapacityError

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def gpu_cluster():
    root = f"/tmp/llmctl-gpu-{os.getpid()}"
    cluster = multinode.start(multinode.plan(root, workers=2, head_cpus=2, worker_cpus=8, worker_gpus=4,
                                             accelerator_type="H100"))  # fmt: skip
    yield cluster
    multinode.stop(cluster)
    shutil.rmtree(root, ignore_errors=True)


def spec(tmp_path, strategy: str, placement: str, tp: int = 4) -> str:
    (tmp_path / "corpus.jsonl").write_text('{"text": "hello world"}\n')
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "hi", "chosen": "hello", "rejected": "go away"}\n')
    gpu = "use_gpu: true"
    path = tmp_path / f"{strategy}-{placement}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: gpus
        storage: {tmp_path}/runs
        stages:
          curate: {{kind: data, inputs: [{tmp_path}/corpus.jsonl]}}
          tokenizer: {{kind: tokenizer, data: curate, vocab_size: 512}}
          pretrain:
            kind: pretrain
            data: curate
            tokenizer: tokenizer
            optim: {{warmup_steps: 1}}
            scaling: {{num_workers: 8, {gpu}, strategy: {strategy}}}
          rm: {{kind: reward_model, model: pretrain, data: {tmp_path}/pairs.jsonl, scaling: {{{gpu}}},
                optim: {{warmup_steps: 1}}}}
          align:
            kind: ppo
            model: pretrain
            prompts: {tmp_path}/pairs.jsonl
            reward_model: rm
            micro_batch_size: 4
            placement: {placement}
            actor: {{num_workers: 2, {gpu}}}
            critic: {{num_workers: 2, {gpu}}}
            reference: {{num_workers: 1, {gpu}}}
            reward: {{num_workers: 1, {gpu}}}
            rollout: {{num_engines: 2, {gpu}}}
          serve:
            kind: serve
            model: pretrain
            placement: {{{gpu}, accelerator_type: H100}}
            engine: {{tensor_parallel_size: {tp}}}
            autoscaling: {{min_replicas: 1, max_replicas: 2, target_ongoing_requests: 4}}
        """))  # fmt: skip
    return str(path)


def placed(tmp_path, cluster, strategy: str, placement: str) -> dict[str, dict[str, list[str]]]:
    sub = runs.submit(spec(tmp_path, strategy, placement), address=cluster.dashboard_url, dry_run=True)
    assert sub.summary.get("dry_run") is True
    return {s["stage"]: s["metrics"]["placement"] for s in sub.summary["stages"]}


def gpu_nodes(cluster) -> set[str]:
    return {n["node_id"] for n in multinode.alive_nodes(cluster.dashboard_url) if n["resources_total"].get("GPU")}


def test_every_stage_is_placed_on_the_gpu_nodes_separate_roles_fill_all_eight_gpus(gpu_cluster, tmp_path):
    where = placed(tmp_path, gpu_cluster, "SPREAD", "separate")
    workers = gpu_nodes(gpu_cluster)
    assert where["curate"] == where["tokenizer"] == {}, "Ray Data and task stages reserve no placement group"
    assert Counter(where["pretrain"]["train workers"]) == dict.fromkeys(workers, 4), "8 ranks: 4 GPUs per node"
    roles = where["align"]
    assert {r: len(n) for r, n in roles.items()} == {"actor": 2, "reference": 1, "critic": 2, "reward": 1,
                                                     "rollout engines": 2}  # fmt: skip
    assert Counter(node for nodes in roles.values() for node in nodes) == dict.fromkeys(workers, 4), "all 8 GPUs"
    for replica in ("replica 0", "replica 1"):
        assert len(set(where["serve"][replica])) == 1, f"{replica}'s 4 tensor-parallel ranks share one node"
    assert set(where["serve"]["replica 0"]) != set(where["serve"]["replica 1"]), "two replicas of 4: one per node"


def test_pack_and_colocated_roles_share_bundles(gpu_cluster, tmp_path):
    where = placed(tmp_path, gpu_cluster, "PACK", "colocated")
    assert Counter(where["pretrain"]["train workers"]) == dict.fromkeys(gpu_nodes(gpu_cluster), 4)
    roles = where["align"]
    assert set(roles) == {"actor+reference+critic+reward", "rollout engines"}
    assert len(roles["actor+reference+critic+reward"]) == 2, "actor rank i and the other roles' rank i share bundle i"


def test_a_replica_bigger_than_any_node_is_refused_before_anything_is_submitted(gpu_cluster, tmp_path):
    with pytest.raises(CapacityError) as err:
        runs.submit(spec(tmp_path, "PACK", "separate", tp=8), address=gpu_cluster.dashboard_url, dry_run=True)
    assert ("stages.serve: one worker (or tensor-parallel replica) needs 8 GPUs on one node; the largest node has 4"
            in str(err.value))  # fmt: skip


def test_plan_reads_the_running_clusters_gpus_and_their_type_from_ray(gpu_cluster, tmp_path):
    import json

    from click.testing import CliRunner

    from cli.main import main

    args = ["plan", spec(tmp_path, "PACK", "separate"), "--address", gpu_cluster.dashboard_url, "--json"]
    out = json.loads(CliRunner().invoke(main, args, catch_exceptions=False).output)
    assert out["cluster"]["gpus"] == 8 and out["cluster"]["device"] == "H100-80GB" and out["fits"] is True
    assert out["stages"]["pretrain"]["estimate"]["gpus"] == 8 and out["stages"]["serve"]["estimate"]["gpus"] == 8

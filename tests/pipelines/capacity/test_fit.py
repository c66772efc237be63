"""A plan against a cluster: estimates per stage, and one message per stage that cannot fit, with the fix."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from cli.main import main
from pipelines import load, plan
from pipelines.capacity import estimate, fit, memory
from pipelines.capacity.devices import from_ray_nodes, parse
from pipelines.capacity.models import shape_of
from pipelines.errors import CapacityError


def gpu_spec(tmp_path, pretrain: str = "", serve: str = "", align: str = "") -> str:
    (tmp_path / "corpus.jsonl").write_text('{"text": "hello world"}\n')
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    path = tmp_path / "gpu.yaml"
    path.write_text(textwrap.dedent(f"""
        name: big
        storage: {tmp_path}/runs
        stages:
          curate: {{kind: data, inputs: [{tmp_path}/corpus.jsonl]}}
          tokenizer: {{kind: tokenizer, data: curate, vocab_size: 32000}}
          pretrain:
            kind: pretrain
            data: curate
            tokenizer: tokenizer
            model: {{preset: 1b}}
            deepspeed: {{zero_stage: 2}}
            optim: {{warmup_steps: 10}}
            schedule: {{steps: 100000, seq_len: 2048, micro_batch_size: 4}}
            scaling: {{num_workers: 16, use_gpu: true}}
            {pretrain}
          align:
            kind: grpo
            model: pretrain
            prompts: {tmp_path}/prompts.jsonl
            reward_function: jobs.rlhf.rewards:target_length
            actor: {{num_workers: 2, use_gpu: true}}
            reference: {{num_workers: 1, use_gpu: true}}
            rollout: {{num_engines: 2, use_gpu: true, kv_cache_bytes: null}}
            {align}
          serve:
            kind: serve
            model: pretrain
            placement: {{use_gpu: true}}
            autoscaling: {{min_replicas: 1, max_replicas: 2, target_ongoing_requests: 4}}
            {serve}
        """))
    return str(path)


def estimates_of(path: str, cluster: str, *overrides: str) -> dict:
    pipeline = plan.resolve(load.load(path, overrides))
    return estimate.estimate_pipeline(pipeline.stages, parse(cluster))


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_a_plan_that_fits_validates_and_plan_json_carries_every_estimate(tmp_path):
    spec = gpu_spec(tmp_path)
    result = cli("validate", spec, "--cluster", "2x8xH100-80GB")
    assert result.exit_code == 0, result.output
    assert "fits 2x8xH100-80GB" in result.output
    out = json.loads(cli("plan", spec, "--cluster", "2x8xH100-80GB", "--json").output)
    assert out["fits"] is True and out["cluster"] == {"label": "2x8xH100-80GB", "gpus": 16, "device": "H100-80GB"}
    pre = out["stages"]["pretrain"]["estimate"]
    keys = {"params", "model_states_gib", "activations_gib", "vllm_gib", "total_gib_per_gpu", "gpus", "hours"}
    assert keys <= set(pre)
    assert out["stages"]["curate"]["estimate"] == "CPU only"
    pipeline = plan.resolve(load.load(spec, ()))
    shape = shape_of(pipeline.stages, "pretrain")
    tokens = 100_000 * 4 * 16 * 2048
    flops = tokens * memory.train_flops_per_token(shape, 2048, checkpointing=False)
    assert pre["params"] == shape.params and pre["gpus"] == 16
    assert pre["hours"] == pytest.approx(flops / (16 * 989.4e12 * 0.40) / 3600, rel=1e-2)
    serve = out["stages"]["serve"]["estimate"]
    assert serve["gpus"] == 2 and serve["vllm_gib"] == pytest.approx(0.9 * 79.6, rel=1e-3) and serve["hours"] is None


def test_memory_that_does_not_fit_names_the_stage_the_estimate_the_device_and_a_fix_that_works(tmp_path):
    spec = gpu_spec(tmp_path, pretrain="")
    tight = ("--set", "pretrain.deepspeed.zero_stage=1", "--set", "pretrain.schedule.micro_batch_size=16",
             "--set", "pretrain.schedule.seq_len=4096")  # fmt: skip
    result = cli("validate", spec, "--cluster", "2x8xA100-40GB", *tight)
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = result.output
    assert "the plan does not fit 2x8xA100-40GB:" in message
    assert "stages.pretrain needs " in message and " GiB per GPU (model states " in message
    assert "but each A100-40GB has 40 GiB. Cheapest fix: --set pretrain.deepspeed.activation_checkpointing=true" in (
        message
    )
    fix = message.split("Cheapest fix: ", 1)[1].split(" (then")[0].split()
    fixed = cli("validate", spec, "--cluster", "2x8xA100-40GB", *tight, *fix)
    assert fixed.exit_code == 0, fixed.output


def test_more_gpus_than_the_cluster_or_a_bundle_bigger_than_a_node_is_refused(tmp_path):
    spec = gpu_spec(tmp_path, serve="engine: {tensor_parallel_size: 8}")
    result = cli("validate", spec, "--cluster", "1x8xH100-80GB")
    assert result.exit_code == 2
    assert ("stages.pretrain occupies 16 GPUs; 1x8xH100-80GB has 8. Use fewer workers or engines, or more nodes "
            "(e.g. --cluster 2x8xH100-80GB).") in result.output  # fmt: skip
    result = cli("validate", spec, "--cluster", "4x4xL40S")
    assert ("stages.serve: one worker (or tensor-parallel replica) needs 8 GPUs on one node; the largest node has "
            "4.") in result.output  # fmt: skip


def test_gpu_stages_on_a_cluster_without_gpus_are_refused_before_anything_runs(tmp_path):
    pipeline = plan.resolve(load.load(gpu_spec(tmp_path), ()))
    cpus = from_ray_nodes([{"resources_total": {"CPU": 8.0}}])
    with pytest.raises(CapacityError) as err:
        fit.check(pipeline.stages, cpus)
    assert "stages.pretrain runs on GPUs but 1 node(s), 0 GPU(s) has none; run it on a GPU cluster" in str(err.value)


def test_colocated_rlhf_roles_share_gpus_separate_roles_each_have_their_own(tmp_path):
    spec = gpu_spec(tmp_path)
    separate = estimates_of(spec, "2x8xH100-80GB")["align"]
    colocated = estimates_of(spec, "2x8xH100-80GB", "align.placement=colocated")["align"]
    assert set(separate.roles) == {"actor", "reference", "rollout"}
    assert separate.gpus == 2 + 1 + 2 and colocated.gpus == 2 + 2  # the reference joins the actor's GPUs
    actor, reference = separate.roles["actor"]["total_gib"], separate.roles["reference"]["total_gib"]
    assert colocated.total_gib_per_gpu == pytest.approx(max(actor + reference, colocated.vllm_gib), abs=0.02)


def test_bad_cluster_input_is_one_message_exit_2(tmp_path):
    spec = gpu_spec(tmp_path)
    for shape, message in (("8xV100", "--cluster: unknown device 'V100'"),
                           ("8-H100", "--cluster: '8-H100' is not a cluster shape")):  # fmt: skip
        result = cli("plan", spec, "--cluster", shape)
        assert result.exit_code == 2 and f"error: {message}" in result.output, result.output


def test_a_model_the_plan_cannot_read_still_has_its_gpus_and_bundles_checked(tmp_path):
    """An s3:// model is not read at plan time: no memory figures, but a replica bigger than any node is refused."""
    spec = gpu_spec(tmp_path, serve="engine: {tensor_parallel_size: 8}")
    pipeline = plan.resolve(load.load(spec, ("serve.model=s3://models/chat",)))
    serve = estimate.estimate_pipeline(pipeline.stages, parse("4x4xL40S"))["serve"]
    assert serve.model_known is False and serve.to_json()["params"] is None and serve.gpus == 16
    with pytest.raises(CapacityError, match=r"stages.serve: one worker \(or tensor-parallel replica\) needs 8 GPUs"):
        fit.check(pipeline.stages, parse("4x4xL40S"))

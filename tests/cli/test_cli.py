"""The CLI surface: exit codes, messages without tracebacks, and light imports."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from cli.main import main
from tests.conftest import ROOT, free_port


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def spec_file(tmp_path, body: str | None = None) -> str:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "hello world"}\n')
    path = tmp_path / "p.yaml"
    path.write_text(body or textwrap.dedent(f"""
        name: t
        storage: {tmp_path}/runs
        stages:
          curate: {{kind: data, inputs: [{corpus}]}}
        """))
    return str(path)


def test_validate_ok(tmp_path):
    result = run("validate", spec_file(tmp_path))
    assert result.exit_code == 0
    assert "pipeline 't', 1 stages (curate)" in result.output


def test_validate_error_exit_2_without_traceback(tmp_path):
    result = run("validate", spec_file(tmp_path), "--set", "curate.exact_dedupe=false")
    assert result.exit_code == 2
    assert "stages.curate.exact_dedupe: unknown field — did you mean 'exact_dedup'?" in result.output
    assert "Traceback" not in result.output


def test_plan_shows_stages_and_cache_state(tmp_path):
    result = run("plan", spec_file(tmp_path))
    assert result.exit_code == 0, result.output
    assert "curate" in result.output and "will run" in result.output


def test_schema_is_json_with_stage_kinds():
    result = run("schema")
    schema = json.loads(result.output)
    assert {"DataStage", "PretrainStage", "TokenizerStage", "ServeStage"} <= set(schema["$defs"])


def test_unreachable_address_is_a_clear_error_and_nothing_is_submitted(tmp_path):
    address = f"http://127.0.0.1:{free_port()}"
    result = run("submit", spec_file(tmp_path), "--address", address)
    assert result.exit_code == 2
    assert f"cannot reach a Ray dashboard at {address}" in result.output
    assert not (tmp_path / "runs" / "t" / "runs").exists(), "no run record is written for a failed submit"


def test_help_and_validate_import_no_heavy_modules(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from click.testing import CliRunner
        from cli.main import main
        for args in (["--help"], ["validate", {spec_file(tmp_path)!r}], ["plan", {spec_file(tmp_path)!r}]):
            r = CliRunner().invoke(main, args)
            assert r.exit_code == 0, r.output
        heavy = sorted(m for m in ("torch", "deepspeed", "vllm", "ray.train", "ray.serve") if m in sys.modules)
        print(heavy)
        """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_help_examples_work():
    """What --help suggests is accepted: the --set example on the example pipeline; --address means the cluster
    to run on everywhere except where a command only plans (one help text each)."""
    import re

    from cli.options import ADDRESS_HELP, PLAN_ADDRESS_HELP
    from cli.serve import serve
    from cluster.runs import make_plan

    example = re.search(r"e\.g\. --set\s+(\S+=\d+)", run("plan", "--help").output)[1]
    p = make_plan(f"{ROOT}/pipelines/examples/tiny.yaml", (example,), check_inputs=False)
    assert p.spec["stages"]["pretrain"]["schedule"]["steps"] == 200
    helps = {o.help for cmd in (main, serve) for sub in cmd.commands.values() for o in getattr(sub, "params", [])
             if o.name == "address"}  # fmt: skip
    assert helps == {ADDRESS_HELP, PLAN_ADDRESS_HELP}, helps


@pytest.mark.cluster
def test_submit_prints_no_package_upload_lines(ray_head, tmp_path):
    """Ray logs each package it zips and uploads; `llmctl submit` shows the run, not that."""
    llmctl = [sys.executable, "-m", "cli.main"]
    out = subprocess.run([*llmctl, "submit", spec_file(tmp_path), "--address", ray_head.dashboard_url, "--no-wait"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ,
                         "PYTHONPATH": ROOT})  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.split()[1].rstrip(":")
    subprocess.run([*llmctl, "stop", run_id, "--address", ray_head.dashboard_url], capture_output=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": ROOT})  # fmt: skip
    printed = out.stdout + out.stderr
    assert "submitted" in out.stdout and "follow it with: llmctl logs -f" in out.stdout
    assert "package" not in printed.lower(), printed


@pytest.mark.cluster
def test_submit_refuses_a_plan_the_cluster_cannot_place_and_submits_nothing(ray_head, tmp_path):
    """The session's head has CPUs only: a stage that asks for GPUs would wait for them forever. Submit reads the
    cluster's nodes from Ray and refuses the plan with one message; no job and no run record appear."""
    from cluster import jobs

    body = textwrap.dedent(f"""
        name: needs-gpus
        storage: {tmp_path}/runs
        stages:
          curate: {{kind: data, inputs: [{tmp_path}/corpus.jsonl]}}
          tokenizer: {{kind: tokenizer, data: curate, vocab_size: 512}}
          pretrain: {{kind: pretrain, data: curate, tokenizer: tokenizer, scaling: {{use_gpu: true}}}}
        """)  # fmt: skip
    before = len(jobs.list_runs(jobs.Target(ray_head.dashboard_url, is_local=False)))
    result = run("submit", spec_file(tmp_path, body), "--address", ray_head.dashboard_url)
    assert result.exit_code == 2, result.output
    assert "error: the plan does not fit 1 node(s), 0 GPU(s):" in result.output
    assert "stages.pretrain runs on GPUs but 1 node(s), 0 GPU(s) has none" in result.output
    assert len(jobs.list_runs(jobs.Target(ray_head.dashboard_url, is_local=False))) == before
    assert not (tmp_path / "runs" / "needs-gpus" / "runs").exists()

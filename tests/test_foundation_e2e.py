"""Submit → run → resubmit on a real Ray cluster through the Jobs API, as a user does with `llmctl submit`."""

import json
import os
import socket
import textwrap
import time

import pytest
from click.testing import CliRunner

from cli.main import main
from cluster import jobs, multinode
from pipelines import storage
from tests.conftest import ROOT, free_port
from tests.observability.chromium import open_page
from tests.services.conftest import printed_curl, requests_served, run_in_shell, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The demo data as `make demo-data` writes it, small: <dir>/data/demo/part-*.jsonl and <dir>/data/demo-chat/."""
    from jobs.demo.chat import write_demo_chat
    from jobs.demo.corpus import write_demo_corpus

    root = tmp_path_factory.mktemp("work")
    manifest = write_demo_corpus(str(root / "data" / "demo"), n_docs=300, seed=1)
    write_demo_chat(str(root / "data" / "demo-chat"), n_sft=200, n_pairs=200, seed=1)
    return root, manifest


def two_stage_spec(tmp_path, corpus_glob: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(f"""
        name: chain
        storage: {tmp_path}/runs
        stages:
          curate: {{kind: data, inputs: ["{corpus_glob}"], minhash: null, pii: null}}
          again: {{kind: data, inputs: [curate], minhash: null, pii: null}}
        """))
    return str(path)


def prometheus_text(dashboard_url: str) -> str:
    """What Prometheus would scrape from every target that Ray's Prometheus service discovery lists."""
    import httpx

    texts = []
    for group in httpx.get(f"{dashboard_url}/api/prometheus/sd", timeout=10).json():
        for target in group["targets"]:
            try:
                texts.append(httpx.get(f"http://{target}/metrics", timeout=10).text)
            except httpx.HTTPError:
                continue
    return "\n".join(texts)


def submit(spec: str, address: str, *extra: str):
    return CliRunner().invoke(main, ["submit", spec, "--address", address, *extra], catch_exceptions=False)


def markers(root) -> dict[str, dict]:
    found = storage.list_files(str(root), "_SUCCESS")
    return {json.loads(open(f).read())["stage"]: json.loads(open(f).read()) for f in found}


def serve_only_spec(tmp_path, port: int) -> str:
    """A pipeline that only serves a model directory (whose files the stage never reads here: it fails first)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"max_position_embeddings": 128}')
    path = tmp_path / "serve.yaml"
    path.write_text(textwrap.dedent(f"""
        name: taken
        storage: {tmp_path}/runs
        stages:
          serve: {{kind: serve, model: {model}, http: {{port: {port}}}, deploy_timeout_s: 120,
                   autoscaling: {{min_replicas: 1, max_replicas: 1, target_ongoing_requests: 2}}}}
        """))
    return str(path)


def test_serve_stage_on_a_taken_port_fails_with_one_message(two_nodes, tmp_path):
    """Another program holds the stage's port (as a user's `make run` app holds 8000): the stage fails before Serve
    starts, with one message. First in this module: the cluster's Serve must not run yet, as on a fresh cluster."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = submit(serve_only_spec(tmp_path, port), two_nodes.dashboard_url)
    assert result.exit_code != 0
    message = (f"stages.serve.http.port: 127.0.0.1:{port} is already taken by another process, so Serve's proxy "
               "cannot listen there. Either set stages.serve.http.port to a free port (`--set serve.http.port=")
    assert f"[serve] failed: {message}" in result.output, result.output
    assert "Traceback" not in result.output and "cannot bind socket" not in result.output


def test_example_pipeline_runs_end_to_end_then_resubmit_skips_every_stage(two_nodes, corpus, monkeypatch):
    """`llmctl submit pipelines/examples/tiny.yaml` as `make run` does it (fewer steps), unchanged, on a cluster of
    two nodes: raw text to an endpoint that answers the openai client; the resubmit skips every stage and only
    re-checks the app."""
    from services.client import ask, gateway_url

    root, manifest = corpus
    monkeypatch.chdir(root)  # the example reads ./data/demo/*.jsonl and writes ./runs
    example = os.path.join(ROOT, "pipelines", "examples", "tiny.yaml")
    small = ["--set", "pretrain.schedule.steps=6", "--set", "pretrain.optim.warmup_steps=1",
             "--set", "pretrain.schedule.eval_every=6",
             "--set", "pretrain.schedule.checkpoint_every=6", "--set", "serve.autoscaling.max_replicas=1",
             # vLLM without graph compilation starts tens of seconds sooner; `make run` serves compiled.
             "--set", "serve.engine.enforce_eager=true",
             # A free port, never a user's running app's (tiny.yaml serves on Serve's default, 8000).
             "--set", f"serve.http.port={free_port()}"]  # fmt: skip
    for stage in ("sft", "dpo"):  # two steps each: the chain pretrain -> sft -> dpo -> serve is what is tested
        for key, value in (("schedule.steps", 2), ("optim.warmup_steps", 1), ("schedule.eval_every", 2),
                           ("schedule.checkpoint_every", 2)):  # fmt: skip
            small += ["--set", f"{stage}.{key}={value}"]
    small += ["--set", "align.steps=2", "--set", "align.checkpoint_every=2", "--set", "align.prompts_per_step=2",
              "--set", "align.micro_batch_size=8", "--set", "align.rollout.max_new_tokens=8",
              "--set", "eval.held_out_fraction=null", "--set", "eval.text_rows=20"]  # fmt: skip
    try:
        first = submit(example, two_nodes.dashboard_url, *small)
        assert first.exit_code == 0, first.output
        done = markers(root / "runs")
        assert set(done) == {"curate", "tokenizer", "pretrain", "sft", "dpo", "align", "serve", "eval"}
        rows = done["curate"]["metrics"]["rows"]
        assert rows["in"] == manifest["expected"]["rows_in"], "every input line is counted"
        assert rows["out"] == manifest["expected"]["kept"]
        assert done["pretrain"]["metrics"]["step"] == 6
        assert done["sft"]["metrics"]["step"] == done["dpo"]["metrics"]["step"] == 2
        assert set(done["eval"]["metrics"]["models"]) == {"pretrain", "sft", "dpo", "align"}
        model_dir = os.path.join(os.path.dirname(storage.list_files(str(root / "runs" / "tiny" / "pretrain"),
                                                                    "config.json")[0]))  # fmt: skip
        assert os.path.exists(os.path.join(model_dir, "model.safetensors"))
        endpoint = done["serve"]["metrics"]["endpoint"]
        serving = done["serve"]["metrics"]
        assert serving["probe_requests"] == 3 and 0 < serving["ttft_s_p50"] <= serving["latency_s_p50"]
        assert f"Endpoint:  {endpoint}" in first.output
        # The curl line it printed, run as it is: no max_tokens, so the engine sizes the answer (the rest of the
        # 128-token context, below the app's default cap of 1024).
        status, body = run_in_shell(printed_curl(first.output), str(root))
        assert status == 200 and body["choices"][0]["message"]["content"], body
        assert ask(endpoint, "tiny", "What is Ray?", max_tokens=8).strip()
        assert endpoint.endswith("/tiny/v1") and f"Gateway:   {gateway_url(endpoint)}" in first.output
        assert ask(gateway_url(endpoint), "tiny", "What is Ray?", max_tokens=8).strip(), "the gateway routes by model"
        # engine.metrics: ray (the default): the engine's counters reach Prometheus through Ray's own service discovery
        # (nodes export every few seconds): the probe's three requests and this one.
        def counted() -> float:
            return requests_served(prometheus_text(two_nodes.dashboard_url), "ray_vllm_request_success_total", "tiny")

        wait_for(lambda: counted() >= 4, 60, what="vLLM's request counter in Prometheus")
        from ray.util.state import list_tasks

        ran_on = {t.node_id for t in list_tasks(address=two_nodes.dashboard_url, limit=10_000) if t.node_id}
        assert ran_on == {n["node_id"] for n in multinode.alive_nodes(two_nodes.dashboard_url)}, "both nodes worked"
        # The report of the real run: every stage has its section, every training stage its curves.
        report = CliRunner().invoke(main, ["report", "tiny", "--storage", str(root / "runs")])
        assert report.exit_code == 0, report.output
        report_path = report.output.split("report: ", 1)[1].splitlines()[0]
        html = open(report_path).read()
        for section in ("data-curate", "train-pretrain", "train-sft", "train-dpo", "train-align", "eval-eval",
                        "serve-serve"):  # fmt: skip
            assert f'<h2 id="{section}"' in html, section
        assert html.count('id="chart-curves"') == 4 and 'id="chart-funnel"' in html and "ttft_s_p50" in html
        # ... and renders in headless Chromium with every chart loaded and no console error.
        loaded = "[...document.querySelectorAll('img.chart')].map(i => i.complete && i.naturalWidth > 0)"
        page = open_page(report_path, loaded)
        assert page.errors == [] and len(page.evaluated) >= 9 and all(page.evaluated), page.evaluated

        started = time.monotonic()
        second = submit(example, two_nodes.dashboard_url, *small)
        elapsed = time.monotonic() - started
        assert second.exit_code == 0, second.output
        for stage in ("curate", "tokenizer", "pretrain", "sft", "dpo", "align", "eval"):
            assert f"[{stage}] cached" in second.output
        again = markers(root / "runs")
        assert {k: v for k, v in again.items() if k != "serve"} == {k: v for k, v in done.items() if k != "serve"}
        assert again["serve"]["metrics"]["endpoint"] == endpoint, "the app was re-checked, not moved"
        assert again["serve"]["metrics"]["unchanged"] is True, "the unchanged app that answers was not redeployed"
        print(f"resubmit with every training stage cached took {elapsed:.1f}s")
    finally:
        CliRunner().invoke(main, ["serve", "down", "tiny", "--address", two_nodes.dashboard_url])


def test_killed_run_resumes_at_the_unfinished_stage(ray_head, tmp_path, corpus):
    root, _ = corpus
    spec = two_stage_spec(tmp_path, f"{root}/data/demo/*.jsonl")
    sub = submit(spec, ray_head.dashboard_url, "--no-wait")
    assert sub.exit_code == 0, sub.output
    target = jobs.Target(ray_head.dashboard_url, is_local=False)
    run_id = sub.output.split()[1].rstrip(":")
    job = jobs.find_job(target, run_id)
    deadline = time.monotonic() + 300
    while "[again] starting" not in jobs.logs(target, job.submission_id):
        assert time.monotonic() < deadline, "the second stage never started"
        assert jobs.status(target, job.submission_id) not in jobs.TERMINAL, jobs.logs(target, job.submission_id)
        time.sleep(0.2)
    jobs.stop(target, job.submission_id)
    while jobs.status(target, job.submission_id) not in jobs.TERMINAL:
        time.sleep(0.2)
    assert jobs.status(target, job.submission_id) == "STOPPED"
    assert set(markers(tmp_path / "runs")) == {"curate"}, "only the finished stage is committed"

    # Whatever the killed attempt left behind must not be read as output.
    again_dirs = [d for d in os.listdir(tmp_path / "runs" / "chain" / "again")]
    leftover = tmp_path / "runs" / "chain" / "again" / again_dirs[0] / "data" / "half-written.parquet"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"not parquet")

    result = submit(spec, ray_head.dashboard_url)
    assert result.exit_code == 0, result.output
    assert "[curate] cached" in result.output and "[again] starting" in result.output
    assert not leftover.exists(), "the unfinished stage restarted from an empty directory"
    assert set(markers(tmp_path / "runs")) == {"curate", "again"}

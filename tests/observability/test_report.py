"""A real run watched and judged: a job on the session cluster (a real data stage on 300 demo documents and a real
tokenizer stage), its metadata in `llmctl list`, its log replayed into the progress view, and `llmctl report`
rendered in headless Chromium.

The pretrain stage is not trained here (minutes on 2 cores): its TensorBoard event files are written by the training
loop's own writer (jobs.train.metrics.TensorBoard) and its marker as the driver writes one, before the submission,
so the job finds it committed and skips it as cached, exactly as a resubmitted run does.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
import time

import pytest
from click.testing import CliRunner

from cli.main import main
from cli.progress import CACHED, DONE_STATE, parse_log, stage_infos, view
from cluster import jobs, runs
from pipelines import storage
from tests.conftest import free_port

pytestmark = pytest.mark.cluster

CHROMIUM = "/usr/bin/chromium"


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def write_spec(root, corpus_glob: str) -> str:
    path = root / "obs.yaml"
    path.write_text(textwrap.dedent(f"""
        name: obs
        storage: {root}/runs
        stages:
          curate: {{kind: data, inputs: ["{corpus_glob}"], exact_dedup: false, minhash: {{threshold: 0.8}}}}
          tokenizer: {{kind: tokenizer, data: curate, vocab_size: 512}}
          pretrain: {{kind: pretrain, data: curate, tokenizer: tokenizer, model: {{preset: tiny}},
                      optim: {{warmup_steps: 2}}, schedule: {{steps: 40, eval_every: 10, log_every: 5}}}}
        """))
    return str(path)


def commit_training_stage(stage, run_id: str) -> None:
    """Event files from the real writer, and the marker the driver would have written after 40 steps."""
    from jobs.train.metrics import TensorBoard

    tb = TensorBoard(storage.join(stage.uri, "tensorboard"), enabled=True)
    for step in range(5, 41, 5):
        metrics = {"step": step, "loss": 7.0 * math.exp(-step / 25) + 2.0, "lr": 3e-3 * (1 - step / 50),
                   "grad_norm": 1.0 / math.sqrt(step), "tokens_per_s": 900.0 + step}  # fmt: skip
        if step % 10 == 0:
            metrics["eval_loss"] = metrics["loss"] + 0.2
        tb.log(step, metrics)
    tb.close()
    storage.write_json(stage.marker_uri, {
        "stage": stage.name, "kind": stage.kind, "cache_key": stage.cache_key, "run_id": run_id,
        "started": time.time() - 60, "seconds": 58.2, "metrics": {"step": 40, "train_loss": 2.7, "eval_loss": 2.9},
    })  # fmt: skip


@pytest.fixture(scope="module")
def run(ray_head, tmp_path_factory):
    """`llmctl submit` of the three-stage pipeline against the session cluster, from a pipe (not a terminal)."""
    from jobs.demo.corpus import write_demo_corpus

    root = tmp_path_factory.mktemp("obs")
    write_demo_corpus(str(root / "corpus"), n_docs=300, seed=2)
    spec = write_spec(root, f"{root}/corpus/*.jsonl")
    plan = runs.make_plan(spec)
    commit_training_stage(next(s for s in plan.stages if s.name == "pretrain"), plan.run_id)
    started = time.monotonic()
    result = cli("submit", spec, "--address", ray_head.dashboard_url)
    print(f"submit took {time.monotonic() - started:.1f}s")
    assert result.exit_code == 0, result.output
    print(result.output)
    return {"root": root, "spec": spec, "plan": plan, "output": result.output, "address": ray_head.dashboard_url}


def test_submit_without_a_terminal_prints_plain_log_lines(run):
    out = run["output"]
    assert "\x1b[" not in out, "no terminal control sequences in piped output"
    for line in ("[curate] starting (data)", "[curate] progress phase=dedup rows_read=300", "[tokenizer] done in",
                 "[pretrain] cached"):  # fmt: skip
        assert line in out, line


def test_list_shows_the_jobs_metadata(run):
    plan = run["plan"]
    target = jobs.Target(run["address"], is_local=False)
    [job] = jobs.jobs_of(target, plan.run_id)
    assert {k: job.metadata[k] for k in ("llmctl_run_id", "pipeline", "stages", "run_uri")} == {
        "llmctl_run_id": plan.run_id, "pipeline": "obs", "stages": "curate,tokenizer,pretrain", "run_uri": plan.run_uri,
    }  # fmt: skip
    listed = cli("list", "--address", run["address"])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if line.startswith(plan.run_id))
    assert row.split("\t")[:5] == [plan.run_id, job.submission_id, "SUCCEEDED", "obs", "curate,tokenizer,pretrain"]


def test_the_recorded_job_log_replays_into_the_final_view(run):
    plan = run["plan"]
    target = jobs.Target(run["address"], is_local=False)
    log = jobs.logs(target, jobs.find_job(target, plan.run_id).submission_id)
    final = {s.name: s for s in view(stage_infos(plan), parse_log(log), now=0.0).stages}
    assert final["curate"].state == final["tokenizer"].state == DONE_STATE
    assert final["curate"].fields["rows_read"] == 300
    assert final["pretrain"].state == CACHED and final["pretrain"].total_steps == 40


def test_report_renders_in_chromium_with_the_funnel_and_the_loss_curve(run, tmp_path):
    from PIL import Image

    from tests.observability.chromium import open_page

    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is not installed: apt-get install -y --no-install-recommends chromium")
    out = tmp_path / "report.html"
    result = cli("report", "obs", "--storage", f"{run['root']}/runs", "--out", str(out), "--address", run["address"])
    assert result.exit_code == 0, result.output
    pretrain = next(s for s in run["plan"].stages if s.name == "pretrain")
    assert f"tensorboard --logdir {pretrain.uri}/tensorboard" in result.output
    html = out.read_text()
    assert "http://" not in html.replace(run["address"], ""), "no link or fetch beyond the Ray dashboard"
    assert f"{run['address']}/#/jobs/" in html

    boxes = """[...document.querySelectorAll('img.chart')].map(i => {
        const r = i.getBoundingClientRect();
        return {id: i.id, ok: i.complete && i.naturalWidth > 0, x: r.left + scrollX, y: r.top + scrollY,
                w: r.width, h: r.height};
    })"""
    page = open_page(str(out), boxes)
    assert page.errors == []
    assert all(u.startswith(("file:", "data:")) for u in page.requests), page.requests
    charts = {b["id"]: b for b in page.evaluated}
    assert {"chart-timings", "chart-funnel", "chart-reasons", "chart-pii", "chart-curves"} <= set(charts)
    assert all(b["ok"] for b in charts.values()), charts
    shot = Image.open(io.BytesIO(page.screenshot)).convert("RGB")
    (tmp_path / "report.png").write_bytes(page.screenshot)
    print(f"screenshot: {tmp_path / 'report.png'}")
    # The funnel's bars (#3b6ea8) and the loss curve (matplotlib's first line colour, #1f77b4) are on screen.
    assert _pixels_near(shot, charts["chart-funnel"], (0x3B, 0x6E, 0xA8)) > 2000
    assert _pixels_near(shot, charts["chart-curves"], (0x1F, 0x77, 0xB4)) > 200


def _pixels_near(image, box, rgb, tolerance: int = 24) -> int:
    crop = image.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["w"]), int(box["y"] + box["h"])))
    return sum(n for n, px in crop.getcolors(maxcolors=1 << 20) if all(abs(a - b) <= tolerance for a, b in
                                                                        zip(px, rgb, strict=True)))  # fmt: skip


def test_report_of_an_unknown_run_names_it_and_the_fix(tmp_path):
    (tmp_path / "runs" / "tiny" / "runs").mkdir(parents=True)
    result = cli("report", "tiny-00000000", "--storage", str(tmp_path / "runs"),
                 "--address", f"http://127.0.0.1:{free_port()}")  # fmt: skip
    assert result.exit_code == 2
    assert (f"error: no run 'tiny-00000000' under {tmp_path}/runs: it is neither a run id" in result.output
            and "(pipelines found: tiny). Pass the pipeline's storage with --storage" in result.output)  # fmt: skip
    assert "Traceback" not in result.output


def test_report_of_a_run_with_no_finished_stage_says_what_to_do(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "hello"}\n')
    spec = tmp_path / "p.yaml"
    spec.write_text(f"name: fresh\nstorage: {tmp_path}/runs\nstages:\n  curate: {{kind: data, inputs: [{corpus}]}}\n")
    plan = runs.make_plan(str(spec))
    runs.write_run_record(plan)  # what `llmctl submit` stores before the job starts
    result = cli("report", "fresh", "--storage", str(tmp_path / "runs"), "--address", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 2
    assert (f"error: run {plan.run_id} has no finished stage yet: none of its stages (curate) has a _SUCCESS marker "
            f"under {tmp_path}/runs/fresh. Wait for its job to finish a stage (`llmctl status {plan.run_id}`)"
            in result.output.replace("\n", " "))  # fmt: skip


def test_eval_section_lists_models_in_spec_order_and_only_the_columns_that_were_measured():
    from cli.report.page import _evaluation
    from cli.report.records import StageRecord
    from pipelines.plan import PlannedStage

    stage = PlannedStage("eval", "eval", "/runs/p/eval/k", "k", {}, {"models": ["sft", "base"]})
    scores = {"base": {"loss": 3.25, "mc_accuracy": 0.5}, "sft": {"loss": 2.5, "mc_accuracy": None}}
    html = _evaluation(StageRecord(stage, {"metrics": {"models": scores, "results": "/runs/p/eval/k/results.md"}}))
    assert "<th>perplexity</th>" not in html, "no model has a perplexity: no empty column"
    assert html.index("<td>sft</td>") < html.index("<td>base</td>")
    assert '<td class="num">2.5</td><td>–</td>' in html and '<td class="num">0.5</td>' in html
    assert "/runs/p/eval/k/results.md" in html

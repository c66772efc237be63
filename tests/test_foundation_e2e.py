"""Submit → run → resubmit on a real Ray cluster through the Jobs API, as a user does with `llmctl submit`."""

import json
import os
import textwrap
import time

import pytest
from click.testing import CliRunner

from cli.main import main
from cluster import jobs, storage

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from jobs.demo.corpus import write_demo_corpus

    out = tmp_path_factory.mktemp("demo")
    manifest = write_demo_corpus(str(out), n_docs=300, seed=1)
    return str(out / "corpus.jsonl"), manifest


def two_stage_spec(tmp_path, corpus_path: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(f"""
        name: chain
        storage: {tmp_path}/runs
        stages:
          curate: {{kind: data, inputs: [{corpus_path}]}}
          again: {{kind: data, inputs: [curate], minhash: null, pii: null}}
        """))
    return str(path)


def submit(spec: str, address: str, *extra: str):
    return CliRunner().invoke(main, ["submit", spec, "--address", address, *extra], catch_exceptions=False)


def markers(tmp_path) -> dict[str, dict]:
    found = storage.list_files(str(tmp_path / "runs" / "chain"), "_SUCCESS")
    return {json.loads(open(f).read())["stage"]: json.loads(open(f).read()) for f in found}


def test_submit_runs_every_stage_then_resubmit_skips_them(ray_head, tmp_path, corpus):
    corpus_path, manifest = corpus
    spec = two_stage_spec(tmp_path, corpus_path)
    first = submit(spec, ray_head.dashboard_url)
    assert first.exit_code == 0, first.output
    done = markers(tmp_path)
    assert set(done) == {"curate", "again"}
    rows = done["curate"]["metrics"]["rows"]
    with open(corpus_path, "rb") as f:
        lines = f.read().count(b"\n")
    assert rows["in"] == lines, "every input line is counted"
    assert rows["in"] == rows["out"] + rows["filtered"] + rows["quarantined"] + rows["duplicates_exact"] + rows[
        "duplicates_near"]
    assert done["again"]["metrics"]["rows"]["in"] == rows["out"], "the second stage reads the first one's output"
    assert "ran" in first.output

    started = time.monotonic()
    second = submit(spec, ray_head.dashboard_url)
    elapsed = time.monotonic() - started
    assert second.exit_code == 0, second.output
    assert second.output.count("cached") >= 2, second.output
    assert markers(tmp_path) == done, "cached stages are not rewritten"
    print(f"fully cached resubmit took {elapsed:.1f}s")


def test_killed_run_resumes_at_the_unfinished_stage(ray_head, tmp_path, corpus):
    corpus_path, _ = corpus
    spec = two_stage_spec(tmp_path, corpus_path)
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
    assert set(markers(tmp_path)) == {"curate"}, "only the finished stage is committed"

    # Whatever the killed attempt left behind must not be read as output.
    again_dirs = [d for d in os.listdir(tmp_path / "runs" / "chain" / "again")]
    leftover = tmp_path / "runs" / "chain" / "again" / again_dirs[0] / "data" / "half-written.parquet"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"not parquet")

    result = submit(spec, ray_head.dashboard_url)
    assert result.exit_code == 0, result.output
    assert "[curate] cached" in result.output and "[again] starting" in result.output
    assert not leftover.exists(), "the unfinished stage restarted from an empty directory"
    assert set(markers(tmp_path)) == {"curate", "again"}

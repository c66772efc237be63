"""Foundation figures: `llmctl --help` latency and fully cached resubmits, each against a baseline in the same run.

Baselines: `python -c "import click"` for the CLI start-up; a no-op Ray job (`python -c pass`) submitted and
awaited through the same Jobs API for the cached resubmits. Two cached resubmits: a one-stage data pipeline, and
the example pipeline `pipelines/examples/tiny.yaml` itself (with `make run`'s demo data and a free serve port), whose
serve stage always runs: it must find its unchanged app answering and leave it be. For that one the figures also
split the resubmit at the moment the driver's summary line reaches the client (what remains is the job ending and
the client noticing), and give the serve stage's own seconds. Prints one JSON object on its last line.

    python bench/foundation.py [--repeats 5] [--no-tiny]    # --no-tiny: skip tiny.yaml's first run (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cluster import jobs, local  # noqa: E402
from pipelines.artifacts import SUMMARY_PREFIX  # noqa: E402
from tests.conftest import free_port  # noqa: E402

LLMCTL = [sys.executable, "-m", "cli.main"]
TINY = os.path.join(ROOT, "pipelines", "examples", "tiny.yaml")


def timed(cmd: list[str], repeats: int, cwd: str = ROOT) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": ROOT})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def noop_job(target: jobs.Target) -> float:
    client = jobs.client(target)
    start = time.perf_counter()
    job_id = client.submit_job(entrypoint="python -c pass", runtime_env=jobs.runtime_env())
    while str(client.get_job_status(job_id)) not in jobs.TERMINAL:
        time.sleep(0.1)
    return time.perf_counter() - start


def spec(tmp: str) -> str:
    from jobs.demo.corpus import write_demo_corpus

    write_demo_corpus(tmp, n_docs=200, seed=0)
    path = os.path.join(tmp, "p.yaml")
    with open(path, "w") as f:
        f.write(textwrap.dedent(f"""
            name: bench
            storage: {tmp}/runs
            stages:
              curate: {{kind: data, inputs: ["{tmp}/*.jsonl"]}}
            """))
    return path


def split_resubmit(cmd: list[str], cwd: str) -> tuple[float, float]:
    """(seconds to the driver's summary line reaching the client, seconds from there until `llmctl` exits)."""
    start = time.perf_counter()
    summary_at = None
    env = {**os.environ, "PYTHONPATH": ROOT}
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as p:
        for line in p.stdout:
            if summary_at is None and line.startswith(SUMMARY_PREFIX):
                summary_at = time.perf_counter()
    end = time.perf_counter()
    if p.returncode != 0 or summary_at is None:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {p.returncode}) or printed no summary")
    return summary_at - start, end - summary_at


def serve_stage(work: str) -> tuple[float, bool]:
    """The serve stage's seconds in its _SUCCESS marker (the latest run's), and whether it left the app as it was."""
    from pipelines import storage

    (marker,) = storage.list_files(os.path.join(work, "runs", "tiny", "serve"), "_SUCCESS")
    with open(marker) as f:
        written = json.load(f)
    return written["seconds"], bool(written["metrics"].get("unchanged"))


def tiny_figures(head: local.LocalHead, repeats: int) -> dict[str, float | bool]:
    """tiny.yaml run once from raw text, then resubmitted unchanged `repeats` times (medians)."""
    from jobs.demo.chat import write_demo_chat
    from jobs.demo.corpus import write_demo_corpus

    with tempfile.TemporaryDirectory() as work:
        write_demo_corpus(os.path.join(work, "data", "demo"))  # what `make run` writes, relative to where it runs
        write_demo_chat(os.path.join(work, "data", "demo-chat"))
        cmd = [*LLMCTL, "submit", TINY, "--address", head.dashboard_url, "--logs",
               "--set", f"serve.http.port={free_port()}"]  # never the port of a user's running app  # fmt: skip
        first = timed(cmd, 1, cwd=work)
        splits, serve = [], []
        for _ in range(repeats):
            splits.append(split_resubmit(cmd, work))
            serve.append(serve_stage(work))
    return {
        "tiny_first_submit_s": round(first, 1),
        "tiny_cached_resubmit_s": round(statistics.median(a + b for a, b in splits), 2),
        "tiny_to_summary_s": round(statistics.median(a for a, _ in splits), 2),
        "tiny_after_summary_s": round(statistics.median(b for _, b in splits), 2),
        "tiny_serve_stage_s": round(statistics.median(s for s, _ in serve), 2),
        "tiny_serve_app_left_as_it_was": all(unchanged for _, unchanged in serve),
    }


def data_figures(head: local.LocalHead, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        submit = [*LLMCTL, "submit", spec(tmp), "--address", head.dashboard_url, "--quiet"]
        first = timed(submit, 1)
        cached = timed(submit, repeats)
    return {"first_submit_s": round(first, 2), "cached_resubmit_s": round(cached, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-tiny", action="store_true", help="skip tiny.yaml (its first run trains every stage)")
    args = parser.parse_args()
    help_s = timed([*LLMCTL, "--help"], args.repeats)
    click_s = timed([sys.executable, "-c", "import click"], args.repeats)
    head = local.LocalHead(free_port(), free_port(), free_port(), free_port(), "/tmp/llmctl-bench", 8,
                           env=local.own_serve_ports())  # fmt: skip
    local.start(head)
    try:
        figures = data_figures(head, args.repeats)
        if not args.no_tiny:
            figures.update(tiny_figures(head, min(args.repeats, 3)))
        noop = statistics.median(noop_job(jobs.Target(head.dashboard_url, is_local=False)) for _ in range(args.repeats))
    finally:
        local.stop(head)
    ratios = {f"{k.removesuffix('_s')}_ratio": round(figures[k] / noop, 2)
              for k in ("cached_resubmit_s", "tiny_cached_resubmit_s") if k in figures}  # fmt: skip
    print(json.dumps({
        "machine": f"{os.cpu_count()} cores",
        "help_s": round(help_s, 3), "baseline_import_click_s": round(click_s, 3),
        "help_ratio": round(help_s / click_s, 2),
        **figures, "baseline_noop_job_s": round(noop, 2), **ratios,
        "targets": {"help_s": 0.5, "cached_resubmit_s": 10, "tiny_cached_resubmit_s": 10},
    }))  # fmt: skip


if __name__ == "__main__":
    main()

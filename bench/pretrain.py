"""Pretraining benchmarks; prints JSON, the figures on the last line.

1. Orchestration overhead: steady-state tokens/s of the pretrain stage (Ray Train + DeepSpeed, Ray Data input)
   against a plain single-process PyTorch loop on the same model, data, optimizer and batch, in the same run:
   plain loop and stage alternate (`--overhead-rounds` stage runs, each compared with the mean of the plain loops
   just before and after it, beside the same Ray cluster; the report's ratios are medians over rounds). Steady state
   = every step after 3 warm-up steps, each timed from the end of the one before, so the stage's logging and its
   Ray Train reports count against it: `ratio` is all those tokens over all that time on both sides;
   `ratio_median` compares the median steps instead, which shrugs off other processes stealing the CPU for a
   few steps but would not see a stall every tenth step. Target: ratio >= 0.9.
2. Quality per wall clock: the stage trains on `--text` (default: a generated corpus) for a fixed wall-clock
   budget; reported are validation bits per character (loss per token × tokens / characters / ln 2) and the wall
   time including start-up (tokenizer, Ray Train workers, data pipeline, export).

3. GPU (`--gpu`, instead of 1 and 2): MFU of the stage on one GPU for the 125m preset in bf16 (seq_len 1024), from
   the stage's own steady-state tokens/s, FLOPs per token and the device's peak (jobs/train/metrics.py). Target 45 %.
   On an offline GPU machine with torch but without ray/deepspeed, install the kit of ../shared/tools/gpu-kit.sh
   as that script's header says, then run `python3 bench/pretrain.py --gpu`.

Usage: .venv/bin/python bench/pretrain.py [--text PATH] [--budget-s 60] [--address HOST:PORT] [--gpu]
Without --address it starts a private Ray head on free ports and stops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cluster import local  # noqa: E402
from jobs import tokenizer as tokenizer_stage  # noqa: E402
from jobs.context import StageContext  # noqa: E402
from jobs.train import packing, pretrain, sources  # noqa: E402
from jobs.train.model import ModelSource, model_config  # noqa: E402
from pipelines.spec.train import PretrainStage, TokenizerStage  # noqa: E402

WARMUP_STEPS = 3  # excluded from steady-state timing on both paths (as in the stage's Throughput meter)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", help="plain-text file to train on (documents split at blank lines)")
    p.add_argument("--budget-s", type=float, default=60.0, help="training-loop wall-clock budget of the quality run")
    p.add_argument("--overhead-steps", type=int, default=200, help="optimizer steps of the overhead comparison")
    p.add_argument("--overhead-rounds", type=int, default=5, help="stage runs, each between two plain loops")
    p.add_argument("--hidden", type=int, default=128, help="model width (head size 32, 4 layers)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--cpus", type=int, default=2, help="CPUs (torch threads) of the single worker and plain loop")
    p.add_argument("--skip", choices=["overhead", "quality"], help="skip one of the two benchmarks")
    p.add_argument("--address", help="an existing Ray cluster (GCS address) instead of a private head")
    p.add_argument("--gpu", action="store_true", help="measure MFU on one GPU instead (125m preset, bf16)")
    p.add_argument("--gpu-steps", type=int, default=60, help="optimizer steps of the GPU run")
    return p.parse_args()


# --- inputs ---------------------------------------------------------------------------------------------------


def generated_corpus(n_docs: int = 6000, seed: int = 0) -> list[str]:
    """Simple English-like documents with learnable structure (agreement, repeated entities), no downloads."""
    rng = random.Random(seed)
    names = ["Ada", "Ben", "Cleo", "Dmitri", "Esme", "Farid", "Greta", "Hiro", "Ines", "Jonas"]
    places = ["the harbour", "the market", "the old mill", "the library", "the station", "the orchard"]
    verbs = [("walked to", "walks to"), ("looked at", "looks at"), ("painted", "paints"), ("visited", "visits")]
    things = ["a red boat", "the tall clock", "an apple tree", "the river", "a quiet street", "the bridge"]
    docs = []
    for _ in range(n_docs):
        who, where = rng.choice(names), rng.choice(places)
        lines = [f"{who} lived near {where}."]
        for _ in range(rng.randint(3, 9)):
            past, present = rng.choice(verbs)
            verb = past if rng.random() < 0.5 else present
            lines.append(f"Every {rng.choice(['morning', 'evening', 'week'])}, {who} {verb} {rng.choice(things)}.")
        lines.append(f"That is why {who} never left {where}.")
        docs.append(" ".join(lines))
    return docs


def read_documents(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    if len(docs) < 50:  # a file without paragraphs: cut it into ~2 kB documents at line breaks
        lines, docs, current = text.splitlines(), [], ""
        for line in lines:
            current += line + "\n"
            if len(current) > 2000:
                docs.append(current)
                current = ""
        docs += [current] if current.strip() else []
    return docs


def write_corpus(docs: list[str], directory: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.join(directory, "data"), exist_ok=True)
    for shard in range(4):
        rows = list(range(shard, len(docs), 4))
        table = pa.table({"id": [str(i) for i in rows], "text": [docs[i] for i in rows]})
        pq.write_table(table, os.path.join(directory, "data", f"part-{shard:05d}.parquet"))
    return directory


def train_tokenizer(data_dir: str, out: str, vocab: int) -> float:
    started = time.time()
    spec = TokenizerStage(kind="tokenizer", data=data_dir, vocab_size=vocab)
    tokenizer_stage.run(StageContext("tokenizer", "tokenizer", spec, "bench", "r", "k", out))
    return time.time() - started


def pretrain_spec(data: str, tok: str, **fields: Any) -> PretrainStage:
    """A pretrain stage on the bench's corpus and tokenizer: packed rows kept in the object store, a 5% held-out
    split, no restarts; `fields` give the model, optimizer, schedule and scaling."""
    return PretrainStage(
        kind="pretrain", data=data, tokenizer=tok, val_fraction=0.05, materialize=True, failure={"max_failures": 0},
        **fields,
    )  # fmt: skip


def stage_spec(args: argparse.Namespace, data: str, tok: str, **schedule: Any) -> PretrainStage:
    return pretrain_spec(
        data,
        tok,
        model={"preset": None, "hidden_size": args.hidden, "num_layers": 4, "num_heads": args.hidden // 32,
               "num_kv_heads": args.hidden // 32, "intermediate_size": args.hidden * 8 // 3},
        optim={"lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 5},
        schedule={"seq_len": args.seq_len, "micro_batch_size": args.micro_batch, **schedule},
        scaling={"num_workers": 1, "cpus_per_worker": args.cpus},
    )  # fmt: skip


def run_stage(spec: PretrainStage, out: str) -> dict[str, Any]:
    return pretrain.run(StageContext("pretrain", "pretrain", spec, "bench", "r", "k", out))


# --- 1. orchestration overhead ---------------------------------------------------------------------------------


def train_sequences(spec: PretrainStage, data: str, tok_dir: str) -> Any:
    """The packed training split, built in-process with the stage's own tokenize-and-pack function."""
    import numpy as np
    import pyarrow.parquet as pq

    info = sources.tokenizer_info(tok_dir, "tokenizer")
    files = sources.parquet_files(data, "data")
    texts = np.array([t for f in files for t in pq.read_table(f)["text"].to_pylist()], dtype=object)
    common = {"tokenizer_json": info.tokenizer_json, "text_column": "text", "seq_len": spec.schedule.seq_len}
    chunks = [
        packing.tokenize_and_pack(
            {"text": texts[i : i + packing.DOCS_PER_BATCH]}, eos_id=info.eos_id, val_fraction=spec.val_fraction,
            split="train", **common,
        )["input_ids"]
        for i in range(0, len(texts), packing.DOCS_PER_BATCH)
    ]  # fmt: skip
    return np.concatenate(chunks), info


def plain_loop(spec: PretrainStage, sequences: Any, info: Any, steps: int, threads: int) -> tuple[float, float]:
    """Steady-state (mean, median) tokens/s of a plain PyTorch loop: same model, data, AdamW, LR schedule and
    clipping as the stage, one process."""
    import torch

    from jobs.train.optim import build_optimizer, lr_factor

    torch.set_num_threads(threads)
    model = ModelSource(config=model_config(spec.model, info, spec.schedule.seq_len)).build(spec.schedule.seed)
    model.config.use_cache = False
    optimizer = build_optimizer(model, spec.optim, offload=False)
    o, mb = spec.optim, spec.schedule.micro_batch_size
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup=o.warmup_steps, total=steps, min_ratio=o.min_lr / o.lr)
    )
    rates: list[float] = []
    for step in range(steps):
        start = time.perf_counter()
        batch = torch.as_tensor(sequences[(step * mb) % (len(sequences) - mb) :][:mb], dtype=torch.long)
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= WARMUP_STEPS:
            rates.append(batch.numel() / (time.perf_counter() - start))
    return len(rates) / sum(1 / r for r in rates), statistics.median(rates)


def overhead(args: argparse.Namespace, data: str, tok: str, work: str, cluster: Cluster) -> dict[str, Any]:
    """Plain loop, stage, plain loop, stage, ..., plain loop: each stage run is compared with the plain loops just
    before and after it (on this machine neighbouring plain loops differed by up to a fifth), and the ratio is the
    median over the rounds."""
    steps = args.overhead_steps
    spec = stage_spec(args, data, tok, steps=steps, eval_every=steps, checkpoint_every=steps, log_every=10)
    sequences, info = train_sequences(spec, data, tok)
    cluster.ensure()  # the plain loop runs beside the same (idle) Ray processes as the stage
    plain = [plain_loop(spec, sequences, info, steps, args.cpus)]
    stages = []
    for i in range(args.overhead_rounds):
        stages.append(run_stage(spec, os.path.join(work, f"overhead-{i}")))
        plain.append(plain_loop(spec, sequences, info, steps, args.cpus))
    around = list(pairwise(plain))  # the plain loops (mean, median) before and after each stage run
    ratios = [m["tokens_per_s"] / ((a[0] + b[0]) / 2) for m, (a, b) in zip(stages, around, strict=True)]
    median_ratios = [m["tokens_per_s_median"] / ((a[1] + b[1]) / 2) for m, (a, b) in zip(stages, around, strict=True)]
    return {
        "ratio": round(statistics.median(ratios), 3),
        "ratio_rounds": [round(r, 3) for r in ratios],
        "ratio_median": round(statistics.median(median_ratios), 3),
        "ray_deepspeed_tokens_per_s": {
            "median": [round(m["tokens_per_s_median"], 1) for m in stages],
            "mean": [round(m["tokens_per_s"], 1) for m in stages],
        },
        "plain_pytorch_tokens_per_s": {
            "median": [round(p[1], 1) for p in plain],
            "mean": [round(p[0], 1) for p in plain],
        },
        "target": 0.9,
        "steps": steps,
        "zero_stage": stages[0]["zero_stage"],  # one worker: the resolved stage is 0
        "params": stages[0]["params"],
        "stage_wall_s": [round(m["wall_s"], 1) for m in stages],
    }


# --- 2. quality per wall clock -----------------------------------------------------------------------------------


def tokens_per_char(data: str, tok: str, fraction: float) -> float:
    """Tokens per character of the validation documents, EOS separators included, as the eval loss counts them."""
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(sources.tokenizer_info(tok, "tokenizer").tokenizer_json)
    texts = [t for f in sources.parquet_files(data, "data") for t in pq.read_table(f)["text"].to_pylist()]
    held = [t for t in texts if t and packing.is_validation(t, fraction)]
    tokens = sum(len(e.ids) + 1 for e in tokenizer.encode_batch(held, add_special_tokens=False))
    return tokens / sum(len(t) for t in held)


def quality(args: argparse.Namespace, data: str, tok: str, work: str, tokenizer_s: float, rate: float | None):
    """Train for the wall-clock budget and report validation bits per character."""
    # Size the cosine schedule to end near the budget when the overhead run measured a step rate.
    steps_per_s = rate / (args.micro_batch * args.seq_len) if rate else 4.0
    steps = max(20, int(args.budget_s * steps_per_s))
    spec = stage_spec(
        args, data, tok, steps=steps, time_budget_s=args.budget_s, eval_every=10**9, eval_batches=10**6,
        checkpoint_every=10**9, log_every=25,
    )  # fmt: skip
    metrics = run_stage(spec, os.path.join(work, "quality"))
    ratio = tokens_per_char(data, tok, spec.val_fraction)
    loss = metrics["eval_loss"]  # None when the held-out split is too small for one micro-batch
    return {
        "val_bits_per_char": None if loss is None else round(loss * ratio / math.log(2), 4),
        "val_loss_per_token": None if loss is None else round(loss, 4),
        "tokens_per_char": round(ratio, 4),
        "budget_s": args.budget_s,
        "steps": metrics["step"],
        "stopped_by": metrics["stopped_by"],
        "train_tokens": metrics["tokens"],
        "wall_s_including_startup": round(tokenizer_s + metrics["wall_s"], 1),
        "tokenizer_s": round(tokenizer_s, 1),
    }


# --- 3. MFU on a GPU -------------------------------------------------------------------------------------------------


def gpu_spec(args: argparse.Namespace, data: str, tok: str) -> PretrainStage:
    """The 125m preset in bf16 on one GPU; one micro-batch of 16 x 1024 tokens per step."""
    return pretrain_spec(
        data,
        tok,
        model={"preset": "125m"},
        deepspeed={"precision": "bf16"},
        optim={"lr": 6e-4, "min_lr": 6e-5, "warmup_steps": 10},
        schedule={"seq_len": 1024, "micro_batch_size": 16, "steps": args.gpu_steps, "log_every": 10,
                  "eval_every": 10**9, "checkpoint_every": 10**9},
        scaling={"num_workers": 1, "use_gpu": True, "gpus_per_worker": 1, "cpus_per_worker": 4},
    )  # fmt: skip


def gpu_mfu(args: argparse.Namespace, data: str, tok: str, work: str) -> dict[str, Any]:
    import torch

    metrics = run_stage(gpu_spec(args, data, tok), os.path.join(work, "gpu"))
    mfu = metrics["mfu"]  # None when the device's peak is unknown (set LLMCTL_PEAK_FLOPS)
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "mfu": None if mfu is None else round(mfu, 4),
        "target": 0.45,
        "tokens_per_s": round(metrics["tokens_per_s"], 1),
        "flops_per_token": metrics["flops_per_token"],
        "params": metrics["params"],
        "precision": metrics["precision"],
        "steps": metrics["step"],
    }


# --- main ----------------------------------------------------------------------------------------------------------


class Cluster:
    """The Ray cluster the stages run on: `--address`, or a private head on free ports started on first use."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.head: local.LocalHead | None = None

    def ensure(self) -> None:
        import ray

        if ray.is_initialized():
            return
        if self.address is None:
            ports = {name: local.free_port() for name in ("port", "dashboard_port", "client_port", "agent_port")}
            self.head = local.start(local.LocalHead(**ports, temp_dir=f"/tmp/llmctl-bench-{os.getpid()}"))
        ray.init(address=self.address or self.head.gcs_address, log_to_driver=False)

    def close(self) -> None:
        import ray

        ray.shutdown()
        if self.head is not None:
            local.stop(self.head)


def main() -> None:
    args = parse_args()
    started = time.time()
    cluster = Cluster(args.address)
    try:
        with tempfile.TemporaryDirectory(prefix="llmctl-bench-") as work:
            docs = read_documents(args.text) if args.text else generated_corpus()
            data = write_corpus(docs, os.path.join(work, "corpus"))
            tok = os.path.join(work, "tokenizer")
            tokenizer_s = train_tokenizer(data, tok, args.vocab)
            result: dict[str, Any] = {"text": args.text or "generated", "documents": len(docs), "device": "cpu"}
            if args.gpu:
                cluster.ensure()
                result.update(device="gpu", gpu=gpu_mfu(args, data, tok, work))
            if not args.gpu and args.skip != "overhead":
                result["overhead"] = overhead(args, data, tok, work, cluster)
                print(json.dumps({"overhead": result["overhead"]}), flush=True)  # kept should the rest fail
            if not args.gpu and args.skip != "quality":
                cluster.ensure()
                rates = result["overhead"]["ray_deepspeed_tokens_per_s"]["mean"] if "overhead" in result else None
                rate = statistics.median(rates) if rates else None
                result["quality"] = quality(args, data, tok, work, tokenizer_s, rate)
            result["bench_wall_s"] = round(time.time() - started, 1)
    finally:
        cluster.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()

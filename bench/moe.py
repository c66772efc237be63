"""Dense model vs mixture-of-experts model with the same active parameters, same data, same wall clock.

    .venv/bin/python bench/moe.py [--budget-s 150] [--hidden 128] [--corpora real,generated]

Both models have 4 layers, head size 32 and an MLP 3 × hidden wide; the MoE variant (Qwen3-MoE) replaces every
MLP with 8 experts of half that width, 2 per token, so a token runs the same MLP parameters plus the router. Each is
trained by the pretrain stage itself (Ray Train + DeepSpeed, one worker with both cores) on the same corpus and
tokenizer for the same training-loop wall-clock budget, with a constant learning rate after warm-up so neither is
cut off mid-schedule. Two corpora: the installed packages' READMEs (text nobody here wrote) and the generated
corpus of bench/pretrain.py. Reported per corpus, in the same run:
- bpc_dense, bpc_moe: validation bits per character (the stage's eval loss × tokens per character / ln 2);
- tokens_per_s_ratio: the MoE stage's steady-state training tokens/s over the dense one's;
- params_total, params_active (MoE), params_dense; expert_load_cv: the coefficient of variation of tokens per
  expert over the last logging window, averaged over layers (0 is perfectly even).
The last line is the JSON report; its top-level figures are the real corpus's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import pretrain as bp  # noqa: E402  (the pretrain benchmark's corpus, tokenizer and stage helpers)

TARGETS = {"bpc_moe_minus_dense_max": 0.0, "expert_load_cv_max": 0.3, "tokens_per_s_ratio_min": 0.6}
EXPERTS, TOP_K = 8, 2


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget-s", type=float, default=150.0, help="training-loop seconds of each model")
    p.add_argument("--hidden", type=int, default=128, help="model width (4 layers, head size 32)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--corpora", default="real,generated")
    p.add_argument("--aux-coef", type=float, help="router_aux_loss_coef of the MoE model (default: the spec's)")
    return p.parse_args()


def documents(corpus: str) -> list[str]:
    if corpus == "generated":
        return bp.generated_corpus()
    from bench.dedup_corpus import base_documents

    return [p for doc in base_documents(min_bytes=2048) for p in doc.split("\n\n") if len(p) > 200]


def model(args: argparse.Namespace, sparse: bool) -> dict[str, Any]:
    heads = args.hidden // 32
    # 3 × hidden wide, so half of it is a whole multiple of 32 (the experts' width): exactly equal active MLPs.
    dense = {"preset": None, "hidden_size": args.hidden, "num_layers": 4, "num_heads": heads, "num_kv_heads": heads,
             "intermediate_size": args.hidden * 3}  # fmt: skip
    if not sparse:
        return dense
    moe = {"num_experts": EXPERTS, "experts_per_token": TOP_K}  # experts: half the MLP width
    if args.aux_coef is not None:
        moe["router_aux_loss_coef"] = args.aux_coef
    return {**dense, "moe": moe}


def train(args: argparse.Namespace, data: str, tok: str, out: str, sparse: bool) -> dict[str, Any]:
    spec = bp.pretrain_spec(
        data, tok, model=model(args, sparse),
        optim={"lr": 2e-3, "min_lr": 2e-3, "warmup_steps": 5},  # constant after warm-up: no schedule cut short
        schedule={"seq_len": args.seq_len, "micro_batch_size": args.micro_batch, "steps": 10**6,
                  "time_budget_s": args.budget_s, "eval_every": 10**9, "eval_batches": 10**6,
                  "checkpoint_every": 10**9, "log_every": 25},
        scaling={"num_workers": 1, "cpus_per_worker": 2},
    )  # fmt: skip
    metrics = bp.run_stage(spec, out)
    metrics["active_params"] = active_params(spec, metrics["params"]) if sparse else metrics["params"]
    return metrics


def active_params(spec: Any, total: int) -> int:
    """Parameters a token runs through: all but the experts it is not routed to (TOP_K of EXPERTS per layer)."""
    dims, moe = spec.model.dims(), spec.model.moe_dims()
    per_expert = 3 * dims["hidden_size"] * moe["expert_intermediate_size"]
    moe_layers = dims["num_layers"] // moe["every_n_layers"]
    return total - moe_layers * (moe["num_experts"] - moe["experts_per_token"]) * per_expert


def compare(args: argparse.Namespace, corpus: str, work: str) -> dict[str, Any]:
    data = bp.write_corpus(documents(corpus), os.path.join(work, corpus))
    tok = os.path.join(work, f"{corpus}-tokenizer")
    bp.train_tokenizer(data, tok, args.vocab)
    per_char = bp.tokens_per_char(data, tok, 0.05)
    runs = {name: train(args, data, tok, os.path.join(work, f"{corpus}-{name}"), name == "moe")
            for name in ("dense", "moe")}  # fmt: skip
    dense, sparse = runs["dense"], runs["moe"]

    def bpc(metrics: dict[str, Any]) -> float:
        return round(metrics["eval_loss"] * per_char / math.log(2), 4)

    result = {
        "bpc_dense": bpc(dense),
        "bpc_moe": bpc(sparse),
        "tokens_per_s_ratio": round(sparse["tokens_per_s"] / dense["tokens_per_s"], 3),
        "params_total": sparse["params"],
        "params_active": sparse["active_params"],
        "params_dense": dense["params"],
        "expert_load_cv": round(sparse["expert_load_cv"], 4),
        "steps": {"dense": dense["step"], "moe": sparse["step"]},
        "tokens": {"dense": dense["tokens"], "moe": sparse["tokens"]},
        "train_aux_loss": sparse.get("train_aux_loss"),
    }
    print(f"{corpus}: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    args = parse_args()
    started = time.time()
    cluster = bp.Cluster(None)
    try:
        cluster.ensure()
        with tempfile.TemporaryDirectory(prefix="llmctl-bench-moe-") as work:
            corpora = {corpus: compare(args, corpus, work) for corpus in args.corpora.split(",")}
    finally:
        cluster.close()
    headline = corpora.get("real") or next(iter(corpora.values()))
    keys = ("bpc_moe", "bpc_dense", "tokens_per_s_ratio", "params_total", "params_active", "expert_load_cv")
    report = {**{k: headline[k] for k in keys}, "corpora": corpora, "budget_s": args.budget_s,
              "hidden": args.hidden, "aux_coef": args.aux_coef, "targets": TARGETS,
              "bench_wall_s": round(time.time() - started, 1)}  # fmt: skip
    print(json.dumps(report))


if __name__ == "__main__":
    main()

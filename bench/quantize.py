"""The quantize stage on a briefly pretrained 125m-preset model: size, quality and speed of each CPU scheme.

    .venv/bin/python bench/quantize.py [--preset 125m] [--steps 60] [--schemes w8a8-int8,w4a16]

A tokenizer (the tokenizer stage) and a Llama of the preset (the training core's model) are trained here for a few
steps on two kinds of text: the installed packages' READMEs (text nobody here wrote) and the generated demo corpus.
The model is saved in bfloat16, as training stages export it, and quantized by the quantize stage itself
(llm-compressor from its own libraries, calibration on training text). Then each model runs in vLLM on CPU, one
process per model, with the same engine settings:
- bits per character of held-out documents of each kind, from vLLM's prompt log-probabilities, so int8 activations
  count as served (transformers would run the dequantized weights in full precision);
- output tokens/s of 8 sequences decoding together (ignore_eos, a fixed length), the median of rounds.
The unquantized model is measured first and last; its two runs bound the machine's drift, and ratios use their
mean. The last line of output is the JSON report, one object per scheme.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TARGETS = {
    "w8a8-int8": {"size_ratio_max": 0.55, "bpc_delta_frac_max": 0.02, "throughput_ratio_min": 1.0},
    "w4a16": {"size_ratio_max": 0.35, "bpc_delta_frac_max": 0.05},
}
SEQ_LEN = 256
STREAMS = 8


def texts(seed: int = 0) -> dict[str, tuple[list[str], list[str]]]:
    """kind -> (training documents, held-out documents)."""
    from bench.dedup_corpus import base_documents
    from jobs.demo.corpus import write_demo_corpus

    real = [p for doc in base_documents(min_bytes=2048) for p in doc.split("\n\n") if len(p) > 200]
    demo_dir = tempfile.mkdtemp(prefix="quantize-demo-")
    write_demo_corpus(demo_dir, seed=seed)
    demo = [text for name in sorted(os.listdir(demo_dir)) if name.endswith(".jsonl")
            for text in map(_text, open(os.path.join(demo_dir, name), "rb")) if text]  # fmt: skip
    shutil.rmtree(demo_dir)
    out = {}
    for kind, docs in (("real", real), ("generated", demo)):
        docs = sorted(set(docs))
        random.Random(seed).shuffle(docs)
        out[kind] = (docs[64:], docs[:64])
    return out


def _text(line: bytes) -> str | None:
    """The text of a demo corpus line; None for the malformed lines it plants."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    text = record.get("text") if isinstance(record, dict) else None
    return text if isinstance(text, str) and len(text) > 200 else None


def train(work: str, preset: str, steps: int, corpus: dict) -> str:
    """Tokenizer and a briefly pretrained model of the preset, saved in bfloat16 with the tokenizer."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from jobs import tokenizer as tokenizer_stage
    from jobs.context import StageContext
    from jobs.train.export import copy_tokenizer
    from jobs.train.model import ModelSource, model_config
    from jobs.train.sources import tokenizer_info
    from pipelines.spec.train import ModelConfig, TokenizerStage

    train_docs = [d for kind in corpus.values() for d in kind[0]]
    os.makedirs(f"{work}/text/data")
    pq.write_table(pa.table({"text": train_docs}), f"{work}/text/data/part-0.parquet")
    spec = TokenizerStage(kind="tokenizer", data=f"{work}/text", vocab_size=8192)
    tokenizer_stage.run(StageContext("tokenizer", "tokenizer", spec, "b", "r", "k", f"{work}/tokenizer"))
    info = tokenizer_info(f"{work}/tokenizer", "tokenizer")
    model = ModelSource(config=model_config(ModelConfig(preset=preset), info, seq_len=SEQ_LEN)).build(seed=0)

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(f"{work}/tokenizer/tokenizer.json")
    ids = [i for doc in train_docs for i in [*tok.encode(doc).ids, info.eos_id]]
    batch, rng = 4, random.Random(0)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    started = time.time()
    for step in range(steps):
        starts = [rng.randrange(0, len(ids) - SEQ_LEN - 1) for _ in range(batch)]
        x = torch.tensor([ids[s : s + SEQ_LEN] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad()
        if step % 10 == 0 or step == steps - 1:
            print(f"pretrain step {step}: loss {loss.item():.3f} ({time.time() - started:.0f}s)", flush=True)
    out = f"{work}/source/model"
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    copy_tokenizer(f"{work}/tokenizer", out)
    return out


def quantize(work: str, source: str, scheme: str, corpus: dict) -> dict:
    from jobs.context import StageContext
    from jobs.quantize import stage
    from pipelines.spec.quantize import QuantizeStage

    calibration = f"{work}/calibration.jsonl"
    with open(calibration, "w") as f:
        for kind in corpus.values():
            f.writelines(json.dumps({"text": d}) + "\n" for d in kind[0][:32])
    spec = QuantizeStage(
        kind="quantize",
        model=source,
        scheme=scheme,
        calibration={"data": calibration, "samples": 64, "seq_len": SEQ_LEN},
        num_cpus=2,
    )  # both cores: Ray gives a task as many OpenMP threads as CPUs
    return stage.run(StageContext("quant", "quantize", spec, "b", "r", "k", f"{work}/{scheme}"))


def reused(source: str, model: str) -> dict:
    """The metrics of a model quantized by an earlier run: its size (the quantization time was that run's)."""
    from jobs.quantize.stage import model_bytes

    return {"size_ratio": round(model_bytes(model) / model_bytes(source), 4), "quantize_s": None}


def measure(model: str, held_out: dict[str, list[str]], rounds: int, max_tokens: int) -> dict:
    """Runs in its own process: bits per character of each kind of held-out text and decode tokens/s."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="bfloat16", max_model_len=SEQ_LEN, enforce_eager=True,
              kv_cache_memory_bytes=512 << 20, seed=0)  # fmt: skip
    tokenizer = llm.get_tokenizer()
    bpc = {}
    for kind, docs in held_out.items():
        # SEQ_LEN - 1 prompt tokens, as ids: the model has SEQ_LEN positions, and vLLM generates one token after.
        ids = [tokenizer(d)["input_ids"][: SEQ_LEN - 1] for d in docs]
        prompts = [{"prompt_token_ids": i} for i in ids]
        outs = llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        nats = sum(-next(iter(p.values())).logprob for o in outs for p in o.prompt_logprobs[1:] if p)
        chars = sum(len(tokenizer.decode(i, skip_special_tokens=True)) for i in ids)
        bpc[kind] = nats / chars / 0.6931471805599453
    prompt = [tokenizer.decode(tokenizer(held_out["real"][i])["input_ids"][:32]) for i in range(STREAMS)]
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0)
    llm.generate(prompt, params, use_tqdm=False)  # warm-up
    speeds = []
    for _ in range(rounds):
        started = time.perf_counter()
        outs = llm.generate(prompt, params, use_tqdm=False)
        speeds.append(sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - started))
    return {"bpc": bpc, "tokens_per_s": statistics.median(speeds), "rounds": speeds}


def measure_in_process(model: str, held_out: dict, args) -> dict:
    job = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(held_out, job)
    job.close()
    cmd = [sys.executable, __file__, "--measure", model, "--held-out", job.name, "--rounds", str(args.rounds),
           "--max-tokens", str(args.max_tokens)]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    os.unlink(job.name)
    if done.returncode != 0:
        raise SystemExit(f"measuring {model} failed:\n{done.stderr[-3000:]}")
    # vLLM may print after the report at shutdown: the report is the last line that is a JSON object.
    return json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith('{"bpc"')))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="125m")
    parser.add_argument("--steps", type=int, default=60, help="pretraining steps (batch 4 x 256 tokens)")
    parser.add_argument("--schemes", default="w8a8-int8,w4a16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--reuse",
        metavar="DIR",
        help="measure the models an earlier run left in DIR (its work directory, kept with --keep)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (printed) for --reuse")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--held-out", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, json.load(open(args.held_out)), args.rounds, args.max_tokens)))
        return
    import ray

    # A private local Ray, as llmctl's heads start: no usage stats, and no token written to ~/.ray that would turn
    # authentication on for every later head on this machine.
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    work = args.reuse or tempfile.mkdtemp(prefix="bench-quantize-")
    try:
        corpus = texts()
        held_out = {kind: docs[1] for kind, docs in corpus.items()}
        if args.reuse:  # the same texts (seeded): only the measurements run again
            source = f"{work}/source/model"
            quantized = {scheme: reused(source, f"{work}/{scheme}/model") for scheme in args.schemes.split(",")}
        else:
            source = train(work, args.preset, args.steps, corpus)
            quantized = {scheme: quantize(work, source, scheme, corpus) for scheme in args.schemes.split(",")}
        first = measure_in_process(source, held_out, args)
        runs = {scheme: measure_in_process(f"{work}/{scheme}/model", held_out, args) for scheme in quantized}
        last = measure_in_process(source, held_out, args)
        base_speed = (first["tokens_per_s"] + last["tokens_per_s"]) / 2
        base_bpc = {k: (first["bpc"][k] + last["bpc"][k]) / 2 for k in first["bpc"]}
        report = {"preset": args.preset, "pretrain_steps": args.steps, "source_bpc": base_bpc,
                  "source_tokens_per_s": [first["tokens_per_s"], last["tokens_per_s"]]}  # fmt: skip
        for scheme, metrics in quantized.items():
            run = runs[scheme]
            delta = {k: (run["bpc"][k] - base_bpc[k]) / base_bpc[k] for k in base_bpc}
            report[scheme] = {
                "size_ratio": metrics["size_ratio"],
                "bpc_delta_frac": max(delta.values()),
                "bpc_delta_frac_by_text": delta,
                "throughput_ratio": run["tokens_per_s"] / base_speed,
                "tokens_per_s_rounds": run["rounds"],
                "quantize_s": metrics["quantize_s"],
                "targets": TARGETS.get(scheme, {}),
            }
            print(f"{scheme}: {json.dumps(report[scheme])}", flush=True)
        print(json.dumps(report))
    finally:
        ray.shutdown()
        if args.keep or args.reuse:
            print(f"work directory kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

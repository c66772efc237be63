"""Curation at scale: the whole `data` stage on Ray Data at growing corpus sizes, and datatrove's MinHash beside it.

For each size, the demo corpus generator (jobs.demo.corpus) writes Parquet shards of that many documents with its
planted problems (malformed rows, low-quality text, exact and near duplicates, PII). The stage runs on a local Ray
head of its own, as a pipeline's `data` stage runs (quality filters, exact dedup, MinHash-LSH near-dedup with
connected components, PII redaction, Parquet out). Reported per size: wall time, docs/s per core, the peak private
memory (RSS less shared pages, so the object store's mapped blocks do not count) of any Ray worker, bytes the
object store spilled, and the funnel, which must equal the planted counts.

datatrove's MinHash pipeline (its four steps: signatures, buckets, clusters, filter; local executor on the same
cores, the same 5-gram shingles and 9 bands x 13 rows) runs on the same input at --datatrove-size. It does
only near-dedup, so `ratio_vs_datatrove` compares it with llmctl's stage set to near-dedup only (no filters, exact
dedup or PII) on the same input; the whole stage's ratio is reported beside it.

    python -m bench.curate [--sizes 10000 100000 1000000] [--datatrove-size 100000] [--workdir /tmp/llmctl-curate]

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import threading
import time

from cluster import local
from pipelines import plan
from pipelines.load import validate
from pipelines.spec.curation import QualityConfig

TARGETS = {"growth_max": 11.0, "peak_mem_spread_max": 1.5, "ratio_vs_datatrove_min": 1.5}


class WorkerMemory:
    """Samples every Ray worker's private memory (RSS - shared) while it runs; `peak_mb` is the largest seen."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.peak, self.peak_task, self._stop = every_s, 0, "", threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.every_s):
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    name = (proc.info["cmdline"] or [""])[0]
                    if name.startswith("ray::"):
                        mem = proc.memory_info()
                        if mem.rss - mem.shared > self.peak:
                            self.peak, self.peak_task = mem.rss - mem.shared, name  # what the worker ran then
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


def corpus(workdir: str, n_docs: int) -> tuple[str, dict]:
    """Parquet shards of the demo corpus (written once per size and generator version, kept in workdir) and
    their manifest."""
    from jobs.demo.corpus import write_demo_corpus
    from pipelines.code import PROJECT

    # what decides the documents: the generator, and the hashing its near-duplicate check uses
    drawn_by = [f for f in PROJECT.closure("jobs.demo.corpus") if f.startswith("jobs/demo/")
                or f in ("jobs/data/text.py", "jobs/data/shingle_hash.py", "jobs/data/minhash.py")]  # fmt: skip
    path = os.path.join(workdir, f"corpus-{n_docs}-{PROJECT.digest(tuple(drawn_by))}")
    manifest = os.path.join(path, "manifest.json")
    if not os.path.exists(manifest):
        shutil.rmtree(path, ignore_errors=True)
        write_demo_corpus(path, n_docs=n_docs, seed=0, fmt="parquet")
    with open(manifest) as f:
        return path, json.load(f)


def spilled_bytes(head: local.LocalHead) -> int:
    from ray._private.internal_api import memory_summary

    summary = memory_summary(head.gcs_address, stats_only=True)
    found = re.search(r"Spilled (\d+) MiB", summary)
    return int(found[1]) * 2**20 if found else 0


# near-dedup only, the work datatrove's MinHash pipeline does: no quality filters, no exact dedup, no PII
DEDUP_ONLY = {"quality": dict.fromkeys(QualityConfig.model_fields), "exact_dedup": False, "pii": None}


def run_stage(path: str, out: str, **config) -> tuple[float, dict]:
    from jobs import driver

    stage = {"kind": "data", "inputs": [f"{path}/*.parquet"], **config}
    spec = validate({"name": "curate-bench", "storage": out, "stages": {"curate": stage}})
    p = plan.build(spec)
    started = time.perf_counter()
    output, _ = driver.run_stage(p, spec, p.stages[0], {})
    return time.perf_counter() - started, output.marker["metrics"]["rows"]


def funnel_matches(rows: dict, expected: dict) -> bool:
    return (rows["in"] == expected["rows_in"] and rows["out"] == expected["kept"]
            and rows["duplicates_exact"] == expected["exact_duplicates"]
            and rows["duplicates_near"] == expected["near_duplicates"]
            and rows["quarantined"] + rows["filtered"] == expected["rejected"] + expected["filtered"])  # fmt: skip


def measure_size(head: local.LocalHead, workdir: str, n_docs: int) -> dict:
    path, manifest = corpus(workdir, n_docs)
    out = os.path.join(workdir, f"runs-{n_docs}")
    shutil.rmtree(out, ignore_errors=True)
    spilled = spilled_bytes(head)
    with WorkerMemory() as memory:
        seconds, rows = run_stage(path, out)
    cores = os.cpu_count() or 1
    return {"docs": n_docs, "seconds": round(seconds, 1), "docs_per_s_per_core": round(n_docs / seconds / cores),
            "peak_worker_mem_mb": memory.peak_mb, "peak_worker_task": memory.peak_task,
            "spilled_bytes": spilled_bytes(head) - spilled,
            "funnel": {k: v for k, v in rows.items() if k != "by_reason"},
            "funnel_matches_planted": funnel_matches(rows, manifest["expected"])}  # fmt: skip


def run_datatrove(path: str, workdir: str, cores: int) -> tuple[float, int]:
    """(seconds, documents removed) for datatrove's four MinHash steps on the Parquet shards at `path`."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import ParquetReader

    out = os.path.join(workdir, "datatrove")
    shutil.rmtree(out, ignore_errors=True)
    config = MinhashConfig(n_grams=5, num_buckets=9, hashes_per_bucket=13)
    reader = ParquetReader(path, glob_pattern="*.parquet", text_key="text", id_key="id")
    steps = [
        [reader, MinhashDedupSignature(output_folder=f"{out}/sigs", config=config)],
        [MinhashDedupBuckets(input_folder=f"{out}/sigs", output_folder=f"{out}/buckets", config=config)],
        [MinhashDedupCluster(input_folder=f"{out}/buckets", output_folder=f"{out}/ids", config=config)],
        [reader, MinhashDedupFilter(input_folder=f"{out}/ids")],
    ]
    tasks = [cores, config.num_buckets, 1, cores]
    started = time.perf_counter()
    for i, (step, n_tasks) in enumerate(zip(steps, tasks, strict=True)):
        LocalPipelineExecutor(pipeline=step, tasks=n_tasks, workers=cores, logging_dir=f"{out}/logs/{i}").run()
    seconds = time.perf_counter() - started
    with open(f"{out}/logs/3/stats.json") as f:  # the filter step: what it dropped
        removed = sum(entry["stats"].get("dropped", 0) for entry in json.load(f))
    return seconds, removed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--datatrove-size", type=int, default=100_000, help="0 skips datatrove")
    parser.add_argument("--workdir", default="/tmp/llmctl-curate")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    free = local.free_port
    head = local.LocalHead(free(), free(), free(), free(), f"/tmp/llmctl-curate-{os.getpid()}",
                           env=local.own_serve_ports())  # fmt: skip
    local.start(head)
    try:
        import ray

        ray.init(address=head.gcs_address, log_to_driver=False)
        sizes = {str(n): measure_size(head, args.workdir, n) for n in args.sizes}
        dedup_only = dedup_only_removed = None
        if args.datatrove_size:
            path, _ = corpus(args.workdir, args.datatrove_size)
            dedup_only, rows = run_stage(path, os.path.join(args.workdir, "runs-dedup-only"), **DEDUP_ONLY)
            dedup_only_removed = rows["duplicates_near"]
        ray.shutdown()
    finally:
        local.stop(head)
    result = summarize(sizes, (dedup_only, dedup_only_removed), args)
    print(json.dumps(result))
    return result


def summarize(sizes: dict, dedup_only: tuple, args: argparse.Namespace) -> dict:
    result: dict = {"bench": "curate", "cores": os.cpu_count(), "sizes": sizes,
                    "docs_per_s_per_core": {n: s["docs_per_s_per_core"] for n, s in sizes.items()},
                    "peak_worker_mem_mb": {n: s["peak_worker_mem_mb"] for n, s in sizes.items()}}  # fmt: skip
    if "100000" in sizes and "1000000" in sizes:
        result["growth"] = round(sizes["1000000"]["seconds"] / sizes["100000"]["seconds"], 2)
    peaks = [s["peak_worker_mem_mb"] for s in sizes.values()]
    result["peak_mem_spread"] = round(max(peaks) / max(1e-9, min(peaks)), 2)
    if "100000" in sizes and "1000000" in sizes:  # the growth that matters: 10k barely wakes the workers up
        result["peak_mem_growth_100k_to_1m"] = round(sizes["1000000"]["peak_worker_mem_mb"]
                                                     / sizes["100000"]["peak_worker_mem_mb"], 2)  # fmt: skip
    if args.datatrove_size:
        path, _ = corpus(args.workdir, args.datatrove_size)
        theirs, removed = run_datatrove(path, args.workdir, os.cpu_count() or 1)
        ours, ours_removed = dedup_only
        result["datatrove_seconds"] = round(theirs, 1)
        result["llmctl_dedup_only_seconds"] = round(ours, 1)
        # the same dedup quality: both remove the planted exact and near copies (exact ones are J = 1)
        result["removed"] = {"llmctl": ours_removed, "datatrove": removed}
        result["ratio_vs_datatrove"] = round(theirs / ours, 2)  # the same work: near-dedup of the input
        whole = sizes.get(str(args.datatrove_size), {}).get("seconds")
        if whole:
            result["ratio_vs_datatrove_whole_stage"] = round(theirs / whole, 2)
    result["targets"] = TARGETS
    result["targets_met"] = {
        "funnel": all(s["funnel_matches_planted"] for s in sizes.values()),
        "growth": result.get("growth", 0) <= TARGETS["growth_max"] if "growth" in result else None,
        "peak_mem": result["peak_mem_spread"] <= TARGETS["peak_mem_spread_max"],
        "ratio_vs_datatrove": result.get("ratio_vs_datatrove", 0) >= TARGETS["ratio_vs_datatrove_min"],
    }
    return result


if __name__ == "__main__":
    main()

"""Printing plans, run summaries and run lists with rich."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)


def print_plan(plan, cached: dict[str, bool]) -> None:
    table = Table(title=f"{plan.pipeline} — run {plan.run_id} (code {plan.code_version})")
    for col in ("stage", "kind", "reads", "cache key", "status"):
        table.add_column(col)
    for s in plan.stages:
        state = "always runs" if s.always_run else ("cached (skip)" if cached.get(s.name) else "will run")
        table.add_row(s.name, s.kind, ", ".join(s.inputs) or "-", s.cache_key, state)
    console.print(table)
    for s in plan.stages:
        if s.kind == "data" and s.config.get("minhash"):
            console.print(_lsh_line(s.name, s.config["minhash"]))
    console.print(f"artifacts: {plan.storage}/{plan.pipeline}/<stage>/<cache key>/")


def print_estimates(cluster, estimates: dict[str, Any], problems: list[str]) -> None:
    """Per stage, per GPU (per CPU worker for CPU stages): memory by part, GPUs occupied, hours at the assumed MFU."""
    device = cluster.device.name if cluster.device else "no known GPU"
    table = Table(title=f"estimates on {cluster.label} ({device}); GiB per GPU, or per worker on CPU")
    for col in ("stage", "params", "model states", "activations (ckpt)", "vLLM", "total", "GPUs", "hours"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for name, est in estimates.items():
        if isinstance(est, str):
            table.add_row(name, est, *[""] * 6)
            continue
        total = f"{est.total_gib_per_gpu:.1f}" + ("" if est.on_gpu else " (CPU)")
        table.add_row(name, _count(est.params) if est.model_known else "unknown", f"{est.model_states_gib:.1f}",
                      f"{est.activations_gib:.1f} ({est.activations_ckpt_gib:.1f})", f"{est.vllm_gib:.1f}", total,
                      str(est.gpus), "-" if est.hours is None else f"{est.hours:.2f}")  # fmt: skip
    console.print(table)
    for line in problems:
        console.print(f"[red]does not fit:[/red] {line}")


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def plan_json(plan, cached: dict[str, bool], cluster, estimates: dict[str, Any], problems: list[str]) -> dict:
    stages = {}
    for s in plan.stages:
        est = estimates.get(s.name)
        stages[s.name] = {"kind": s.kind, "cache_key": s.cache_key, "uri": s.uri, "reads": list(s.inputs),
                          "cached": cached.get(s.name, False), "always_run": s.always_run,
                          "estimate": est.to_json() if hasattr(est, "to_json") else est}  # fmt: skip
    out = {"pipeline": plan.pipeline, "run_id": plan.run_id, "code_version": plan.code_version, "stages": stages}
    if cluster is not None:
        out["cluster"] = {"label": cluster.label, "gpus": cluster.total_gpus,
                          "device": cluster.device.name if cluster.device else None}  # fmt: skip
        out["fits"], out["problems"] = not problems, problems
    return out


def _lsh_line(stage: str, minhash: dict[str, Any]) -> str:
    """The LSH banding and its S-curve 1-(1-s^r)^b: the chance a pair at Jaccard s becomes a candidate."""
    from pipelines.lsh import describe
    from pipelines.spec.curation import MinHashConfig

    d = describe(MinHashConfig(**minhash))
    curve = "  ".join(f"{s}:{p:.3f}" for s, p in d["s_curve"].items())
    return (
        f"{stage}: MinHash {d['num_perm']} perms = {d['bands']} bands x {d['rows']} rows "
        f"(threshold {d['threshold']}); P(candidate | Jaccard s)  {curve}"
    )


def print_summary(sub) -> None:
    stages: list[dict[str, Any]] = sub.summary.get("stages", [])
    table = Table(title=f"run {sub.run_id}: {sub.status}")
    for col in ("stage", "kind", "outcome", "produced"):
        table.add_column(col)
    for s in stages:
        table.add_row(s["stage"], s["kind"], s["outcome"], _produced(s))
    console.print(table)
    for s in stages:
        m = s.get("metrics", {})
        if m.get("endpoint"):
            from services.client import usage

            key_env = (m.get("api_key_env") or [None])[0]
            console.print(usage(m["endpoint"], m["app"], sub.target.dashboard_url, key_env), markup=False)
    console.print(f"dashboard: {sub.target.dashboard_url}")


def follow_live(sub) -> None:
    """Follow a submitted run with the live stage table; when it fails, print the end of its log under the table."""
    from cli.progress import LiveProgress
    from cluster import runs
    from pipelines.errors import JobFailed

    failure: JobFailed | None = None
    with LiveProgress(sub.plan, console) as live:
        try:
            runs.follow(sub, live.feed)
        except JobFailed as exc:
            failure = exc
        live.finish(sub.status)
    if failure is not None:
        console.print("\n".join(live.tail), markup=False, style="dim")
        raise failure


# What the summary shows of each stage's metrics, in this order (the full metrics are in its _SUCCESS marker).
SUMMARY_KEYS = ("vocab_size", "step", "train_loss", "eval_loss", "tokens_per_s", "mfu", "replicas", "endpoint")


def _produced(stage: dict[str, Any]) -> str:
    metrics = stage.get("metrics", {})
    if "placement" in metrics:  # a --dry-run: where each role's bundles were placed
        return placement_text(metrics["placement"]) or "nothing to place (runs as Ray tasks)"
    rows = metrics.get("rows")
    parts = [f"rows {k}={v}" for k, v in rows.items() if k != "by_reason"] if isinstance(rows, dict) else []
    for key in SUMMARY_KEYS:
        value = metrics.get(key)
        if value is not None:
            parts.append(f"{key}={round(value, 4) if isinstance(value, float) else value}")
    return (" ".join(parts) + "\n" if parts else "") + stage["uri"]


def placement_text(placement: dict[str, list[str]]) -> str:
    """'role: 4 on node 1a2b3c4d, 4 on node 5e6f7a8b' per line, nodes in the order bundles landed."""
    from collections import Counter

    return "\n".join(f"{role}: " + ", ".join(f"{n} on node {node[:8]}" for node, n in Counter(nodes).items())
                     for role, nodes in placement.items())  # fmt: skip


def print_runs(jobs) -> None:
    """One row per job from its metadata (run id, pipeline, stages): a table in a terminal, else tab-separated lines
    (CI logs, pipes, scripts)."""
    header = ("run", "job", "status", "pipeline", "stages", "started")
    rows = []
    for j in jobs:
        meta = j.metadata or {}
        started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
        rows.append((meta.get("llmctl_run_id", "?"), j.submission_id, str(j.status), meta.get("pipeline", ""),
                     meta.get("stages", ""), started))  # fmt: skip
    if not console.is_terminal:
        import click

        for row in (header, *rows):
            click.echo("\t".join(row))
        return
    table = Table()
    for col in header:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)

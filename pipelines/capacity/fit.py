"""Whether a plan fits a cluster, and for each stage that does not, the one change that makes it fit."""

from __future__ import annotations

from typing import Any

from pipelines.capacity.devices import Cluster
from pipelines.capacity.estimate import DEFAULT_MFU, Estimate, estimate_pipeline
from pipelines.errors import CapacityError


def assess(stages: dict[str, Any], cluster: Cluster, mfu: float = DEFAULT_MFU) -> tuple[dict[str, Any], list[str]]:
    """The estimates, and one line per stage that cannot run on `cluster` with its cheapest fix (none if it fits)."""
    estimates = estimate_pipeline(stages, cluster, mfu)
    found = [p for name, est in estimates.items() if isinstance(est, Estimate)
             for p in problems(name, stages, est, cluster, mfu)]  # fmt: skip
    return estimates, found


def check(stages: dict[str, Any], cluster: Cluster, mfu: float = DEFAULT_MFU) -> dict[str, Any]:
    """The estimates, or CapacityError naming every stage that cannot run on `cluster` and its cheapest fix."""
    estimates, found = assess(stages, cluster, mfu)
    if found:
        raise CapacityError("the plan does not fit " + cluster.label + ":\n  " + "\n  ".join(found))
    return estimates


def problems(
    name: str, stages: dict[str, Any], est: Estimate, cluster: Cluster, mfu: float, with_fix: bool = True
) -> list[str]:
    if not est.on_gpu:
        return []
    where = f"stages.{name}"
    device = cluster.device
    if device is None or cluster.total_gpus == 0:
        return [f"{where} runs on GPUs but {cluster.label} has none{_unknown(cluster)}; run it on a GPU cluster "
                f"or set its use_gpu to false."]  # fmt: skip
    if est.bundle_gpus > cluster.most_gpus_per_node:
        return [f"{where}: one worker (or tensor-parallel replica) needs {est.bundle_gpus:g} GPUs on one node; "
                f"the largest node has {cluster.most_gpus_per_node}. Lower its gpus_per_worker or "
                f"tensor_parallel_size."]  # fmt: skip
    if est.gpus > cluster.total_gpus:
        return [f"{where} occupies {est.gpus} GPUs; {cluster.label} has {cluster.total_gpus}. Use fewer workers or "
                f"engines, or more nodes (e.g. --cluster {_more_nodes(est.gpus, cluster)})."]  # fmt: skip
    if est.vllm_min_gib > est.vllm_gib:
        return [f"{where}: vLLM needs {est.vllm_min_gib:.1f} GiB per GPU for the weights and one longest sequence "
                f"but is given {est.vllm_gib:.1f} GiB; raise gpu_memory_utilization or tensor_parallel_size, or lower "
                f"max_model_len."]  # fmt: skip
    if est.total_gib_per_gpu <= device.memory_gib:
        return []
    fix = cheapest_fix(name, stages, cluster, mfu) if with_fix else ""
    return [f"{where} needs {est.total_gib_per_gpu:.1f} GiB per GPU ({_parts(est)}) but each {device.name} has "
            f"{device.memory_gib:g} GiB. {fix}".rstrip()]  # fmt: skip


def _parts(est: Estimate) -> str:
    parts = [("model states", est.model_states_gib), ("activations", est.activations_gib), ("vLLM", est.vllm_gib)]
    return ", ".join(f"{label} {gib:.1f}" for label, gib in parts if gib >= 0.05)


def _unknown(cluster: Cluster) -> str:
    return f" the estimates know (Ray reports {', '.join(cluster.unknown)})" if cluster.unknown else ""


def _more_nodes(gpus: int, cluster: Cluster) -> str:
    per_node = cluster.most_gpus_per_node
    return f"{-(-gpus // per_node)}x{per_node}x{cluster.device.name if cluster.device else 'GPU'}"


def candidates(stage: Any) -> list[dict[str, Any]]:
    """Changes that lower memory per GPU, cheapest first: more sharding, recomputation, smaller micro-batches with
    more accumulation (the same global batch), offload, then twice the GPUs."""
    ds = getattr(stage, "deepspeed", None)
    if ds is None:
        return []
    out: list[dict[str, Any]] = [{"deepspeed.zero_stage": z} for z in range(ds.zero_stage + 1, 4)]
    if getattr(stage, "placement", None) == "colocated":
        out.insert(0, {"placement": "separate"})
    out.append({"deepspeed.activation_checkpointing": True})
    schedule = getattr(stage, "schedule", None)
    if schedule is not None and schedule.micro_batch_size > 1:
        half = {
            "schedule.micro_batch_size": schedule.micro_batch_size // 2,
            "schedule.grad_accum": schedule.grad_accum * 2,
        }
        out.append(half)
    out.append({"deepspeed.offload_optimizer": True})
    out.append({"deepspeed.offload_params": True})
    group = "actor" if hasattr(stage, "actor") else "scaling"
    out.append({f"{group}.num_workers": getattr(stage, group).num_workers * 2})
    return out


def cheapest_fix(name: str, stages: dict[str, Any], cluster: Cluster, mfu: float) -> str:
    """The first single change after which the stage fits, else the shortest run of changes, in candidate order."""
    options = candidates(stages[name])
    for change in options:
        found = _fits_with(name, stages, change, cluster, mfu)
        if found:
            return found
    applied: dict[str, Any] = {}
    for change in options:
        applied.update(change)
        found = _fits_with(name, stages, applied, cluster, mfu)
        if found:
            return found
    return (
        "No ZeRO stage, recomputation, smaller micro-batch, offload or doubling of workers fits it: use a device "
        "with more memory or a smaller model."
    )


def _fits_with(name: str, stages: dict[str, Any], changes: dict[str, Any], cluster: Cluster, mfu: float) -> str:
    """'Cheapest fix: --set …' if the stage fits with `changes` (invalid combinations are skipped), else ''."""
    stage, used = stages[name], {}
    for path, value in changes.items():
        try:
            stage = with_value(stage, path, value)
        except ValueError:  # e.g. offload_params before ZeRO-3
            continue
        used[path] = str(value).lower() if isinstance(value, bool) else value
    if not used:
        return ""
    changed = {**stages, name: stage}
    est = estimate_pipeline(changed, cluster, mfu)[name]
    if not isinstance(est, Estimate) or problems(name, changed, est, cluster, mfu, with_fix=False):
        return ""
    sets = " ".join(f"--set {name}.{path}={value}" for path, value in used.items())
    return f"Cheapest fix: {sets} (then {est.total_gib_per_gpu:.1f} GiB per GPU)."


def with_value(stage: Any, path: str, value: Any) -> Any:
    """A copy of the stage spec with one dotted field changed, validated again."""
    data = stage.model_dump()
    node = data
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return type(stage).model_validate(data)

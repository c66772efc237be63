"""`llmctl submit --dry-run`: where every stage's workers would land, proven on the cluster itself.

For each stage the job builds the placement groups the stage really asks Ray for, from the same builders the
stage uses (Ray Train's ScalingConfig for the training stages, the RLHF roles' bundles and pool, the Serve app's
replica placement), all of a stage's groups at once as they coexist when it runs. It waits until Ray has placed
every bundle, records the node of each, and removes them: no worker starts, nothing touches CUDA, so this runs on
a cluster whose nodes only declare their GPUs (cluster.multinode --worker-gpus) as well as on the real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.errors import StageError

PLACE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Group:
    """One placement group a stage asks for: a role's bundles and their strategy."""

    role: str
    bundles: list[dict[str, float]]
    strategy: str


def groups(spec: Any) -> list[Group]:
    """The placement groups of a stage spec; none for stages that run as Ray tasks (curation, tokenizer, eval)."""
    from pipelines.spec.post import PostTrainStage
    from pipelines.spec.rlhf import RLHFStage
    from pipelines.spec.serve import ServeStage
    from pipelines.spec.train import PretrainStage

    if isinstance(spec, (PretrainStage, PostTrainStage)):
        return [_train_group(spec.scaling)]
    if isinstance(spec, RLHFStage):
        return _rlhf_groups(spec)
    if isinstance(spec, ServeStage):
        return _serve_groups(spec)
    return []


def _train_group(scaling: Any) -> Group:
    from jobs.train.launch import scaling_config

    config = scaling_config(scaling)  # what the stage hands Ray Train
    bundle = {k: float(v) for k, v in config._resources_per_worker_not_none.items()}
    return Group("train workers", [dict(bundle) for _ in range(config.num_workers)], config.placement_strategy)


def _rlhf_groups(spec: Any) -> list[Group]:
    """As jobs.rlhf.stage.start_roles places them: a group per role, or one shared pool when colocated; the
    rollout engines always in a group of their own."""
    from jobs.rlhf.stage import engine_resources, resources, role_scalings

    roles = role_scalings(spec)
    if spec.placement == "colocated":
        bundle = resources(spec.actor)
        out = [Group("+".join(roles), [dict(bundle) for _ in range(spec.actor.num_workers)], spec.actor.strategy)]
    else:
        out = [Group(name, [resources(s) for _ in range(s.num_workers)], s.strategy) for name, s in roles.items()]
    r = spec.rollout
    return [*out, Group("rollout engines", [engine_resources(r) for _ in range(r.num_engines)], "PACK")]


def _serve_groups(spec: Any) -> list[Group]:
    """One group per replica at max_replicas, with the bundles and strategy the app's LLMConfig carries."""
    from services.app import placement

    config = placement(spec)["placement_group_config"]
    bundles = [dict(b) for b in config["bundles"]]
    if spec.placement.accelerator_type:  # Serve LLM adds this hint to every bundle
        for b in bundles:
            b.setdefault(f"accelerator_type:{spec.placement.accelerator_type}", 0.001)
    replicas = spec.autoscaling.max_replicas
    return [Group(f"replica {i}", [dict(b) for b in bundles], config["strategy"]) for i in range(replicas)]


def place(stage: str, planned: list[Group], timeout: float = PLACE_TIMEOUT_S) -> dict[str, list[str]]:
    """Reserve every group at once, wait until Ray placed them all, and return role -> node id per bundle."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    pgs = [placement_group(g.bundles, strategy=g.strategy, name=f"dry-run-{stage}-{g.role}") for g in planned]
    try:
        refs = [pg.ready() for pg in pgs]
        ready, _ = ray.wait(refs, num_returns=len(pgs), timeout=timeout)
        if len(ready) < len(pgs):
            waiting = [g.role for g, ref in zip(planned, refs, strict=True) if ref not in ready]
            raise StageError(
                f"stages.{stage}: Ray could not place {', '.join(waiting)} within {timeout:.0f}s beside the stage's "
                f"other groups ({_describe(planned)}); the cluster lacks the resources or a node of that shape. "
                f"`llmctl plan --address` compares the plan with the cluster."
            )
        out = {}
        for group, pg in zip(planned, pgs, strict=True):
            nodes = placement_group_table(pg)["bundles_to_node_id"]
            out[group.role] = [nodes[i] for i in range(len(group.bundles))]
        return out
    finally:
        for pg in pgs:
            remove_placement_group(pg)


def _describe(planned: list[Group]) -> str:
    return "; ".join(f"{g.role}: {len(g.bundles)} x {g.bundles[0]} {g.strategy}" for g in planned if g.bundles)


def dry_run(stage: str, spec: Any) -> dict[str, Any]:
    """A stage's placement as metrics: role -> node ids, or an empty dict for a stage with nothing to place."""
    planned = groups(spec)
    return {"placement": place(stage, planned) if planned else {}}

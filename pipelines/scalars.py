"""Scalars from TensorBoard event files, read with the protobufs tensorboardX ships (no TensorFlow/TensorBoard).

An event file is a sequence of TFRecords: uint64 length, uint32 CRC of the length, the serialized `Event`, uint32
CRC of the data. A file still being written may end in a partial record, which is ignored.
"""

from __future__ import annotations

import os
import struct

from pipelines import storage

Series = list[tuple[int, float]]  # (step, value), sorted by step
# Where a stage's scalars are: `tensorboard/` once it finished, `_state/tensorboard/` while it runs.
TENSORBOARD_DIRS = ("tensorboard", "_state/tensorboard")


def event_files(uri: str) -> list[str]:
    return [f for f in storage.list_files(uri) if "tfevents" in os.path.basename(f)]


def read_scalars(uri: str) -> dict[str, Series]:
    """tag -> its (step, value) points from every event file under `uri`. A step logged twice (a resumed run
    re-logs from its last checkpoint) keeps the value written last."""
    latest: dict[str, dict[int, tuple[float, float]]] = {}  # tag -> step -> (wall time, value)
    for path in event_files(uri):
        for wall, step, tag, value in _scalar_records(_read_bytes(path)):
            seen = latest.setdefault(tag, {})
            if step not in seen or seen[step][0] <= wall:
                seen[step] = (wall, value)
    return {tag: sorted((step, v) for step, (_, v) in points.items()) for tag, points in sorted(latest.items())}


def stage_scalars(stage_uri: str) -> tuple[dict[str, Series], str | None]:
    """A stage's scalars and the directory they were read from; ({}, None) for a stage that logs none."""
    for sub in TENSORBOARD_DIRS:
        uri = storage.join(stage_uri, sub)
        if event_files(uri):
            return read_scalars(uri), uri
    return {}, None


def _read_bytes(uri: str) -> bytes:
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def _scalar_records(data: bytes):
    from tensorboardX.proto import event_pb2

    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        start, end = offset + 12, offset + 12 + length
        if end + 4 > len(data):
            return  # a partial record at the end of a file being written
        event = event_pb2.Event()
        event.ParseFromString(data[start:end])
        offset = end + 4
        for value in event.summary.value:
            if value.HasField("simple_value"):
                yield event.wall_time, event.step, value.tag, float(value.simple_value)
            elif value.HasField("tensor") and value.tensor.float_val:
                yield event.wall_time, event.step, value.tag, float(value.tensor.float_val[0])

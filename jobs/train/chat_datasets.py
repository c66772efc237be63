"""Chat and preference data as Ray Datasets of fixed-shape token rows, with every dropped record counted.

Records are read as JSON lines (or Parquet rows), encoded by `chat_data` in Ray Data tasks and materialized
once; one pass over the small bookkeeping columns counts the split, drop reasons and truncations for the stage
marker, and the train/val datasets are filtered views of the materialized rows. Rows are padded to `max_len`
with the pad id (the reward head reads the last non-pad token) and carry their true length, so a batch is cut
to its longest row before the forward pass.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs.train.chat_data import IGNORE, Drop, Encoder, EncodeSettings, to_conversation, to_pair
from jobs.train.packing import is_validation, read_parquet
from pipelines import storage
from pipelines.errors import StageError

if TYPE_CHECKING:
    import ray.data

RECORDS_PER_BATCH = 256
BOOKKEEPING = ("reason", "split", "truncated")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
_ENCODERS: dict[str, Encoder] = {}  # per process: Ray Data reuses worker processes across tasks


@dataclass
class Prepared:
    """A stage's training data: datasets by split and the accounting that goes into its marker."""

    datasets: dict[str, ray.data.Dataset]
    rows: dict[str, int]
    dropped: dict[str, int] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {"rows": self.rows, "dropped": self.dropped}


def data_files(uri: str, field_name: str) -> list[str]:
    """JSONL/Parquet files behind a data reference: a file, a glob, a directory, or an earlier stage's output
    (its `data/` subdirectory first)."""
    candidates = [storage.join(uri, "data"), uri] if not any(c in uri for c in "*?[") else [uri]
    for candidate in candidates:
        files = [f for f in storage.expand(candidate) if f.endswith(DATA_SUFFIXES)]
        if files:
            return files
    raise StageError(
        f"{field_name}: no .jsonl, .json or .parquet files at '{uri}'. Point it at a file, a glob such as "
        f"'data/chat/*.jsonl', a directory, or an earlier stage whose output holds such files."
    )


def read_records(files: list[str]) -> ray.data.Dataset:
    """One row per record with a single string column "record" (the JSON text), whatever the file type."""
    import ray.data

    fs, _ = storage.filesystem(files[0])
    jsonl = [storage.filesystem(f)[1] for f in files if not f.endswith(".parquet")]
    parquet = [storage.filesystem(f)[1] for f in files if f.endswith(".parquet")]
    parts = []
    if jsonl:
        text = ray.data.read_text(jsonl, filesystem=fs, drop_empty_lines=True)
        parts.append(text.map_batches(_rename_text, batch_format="pyarrow"))
    if parquet:
        rows = read_parquet(parquet, fs)
        parts.append(rows.map_batches(_rows_as_json, batch_format="pyarrow"))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def _rename_text(table: Any) -> Any:
    return table.select(["text"]).rename_columns(["record"])


def _rows_as_json(table: Any) -> Any:
    import pyarrow as pa

    return pa.table({"record": [json.dumps(row, default=str) for row in table.to_pylist()]})


def _encoder(settings: EncodeSettings) -> Encoder:
    if settings.key not in _ENCODERS:
        _ENCODERS[settings.key] = Encoder(settings)
    return _ENCODERS[settings.key]


def encode_conversations(batch: dict[str, np.ndarray], settings: EncodeSettings) -> dict[str, np.ndarray]:
    """Ray Data batch function: records -> SFT rows (input_ids, labels, length) plus bookkeeping columns."""
    from jobs.train.chat_data import parse_json

    encoder = _encoder(settings)
    rows = Rows(settings, ("input_ids", "labels"))
    for line in batch["record"]:
        try:
            ids, labels, truncated = encoder.conversation(
                to_conversation(parse_json(line), settings.data_format, settings.system_prompt)
            )
        except Drop as drop:
            rows.drop(drop.reason)
            continue
        rows.add(str(line), truncated, {"input_ids": ids, "labels": labels}, length=len(ids))
    return rows.arrays()


def encode_pairs(batch: dict[str, np.ndarray], settings: EncodeSettings) -> dict[str, np.ndarray]:
    """Ray Data batch function: records -> preference rows (prompt_len, chosen/rejected ids and lengths)."""
    from jobs.train.chat_data import parse_json

    encoder = _encoder(settings)
    rows = Rows(settings, ("chosen_ids", "rejected_ids"), extra=("prompt_len", "chosen_len", "rejected_len"))
    for line in batch["record"]:
        try:
            prompt_len, chosen, rejected, truncated = encoder.pair(
                to_pair(parse_json(line), settings.data_format, settings.system_prompt)
            )
        except Drop as drop:
            rows.drop(drop.reason)
            continue
        sequences = {"chosen_ids": chosen, "rejected_ids": rejected}
        rows.add(str(line), truncated, sequences, prompt_len=prompt_len, chosen_len=len(chosen),
                 rejected_len=len(rejected))  # fmt: skip
    return rows.arrays()


class Rows:
    """Columns of one output batch. Dropped records keep a row (zeros, with their reason) so the counts are
    taken from the same materialized data the training reads."""

    def __init__(self, settings: EncodeSettings, sequences: tuple[str, ...], extra: tuple[str, ...] = ("length",)):
        self.settings = settings
        self.sequences = sequences
        self.extra = extra
        self.columns: dict[str, list[Any]] = {name: [] for name in (*BOOKKEEPING, *sequences, *extra)}

    def add(self, key: str, truncated: bool, sequences: dict[str, list[int]], **extra: int) -> None:
        split = "val" if is_validation(key, self.settings.val_fraction) else "train"
        self._append("", split, truncated, sequences, extra)

    def drop(self, reason: str) -> None:
        self._append(reason, "", False, {name: [] for name in self.sequences}, dict.fromkeys(self.extra, 0))

    def _append(self, reason: str, split: str, truncated: bool, sequences: dict, extra: dict) -> None:
        self.columns["reason"].append(reason)
        self.columns["split"].append(split)
        self.columns["truncated"].append(truncated)
        for name in self.sequences:
            self.columns[name].append(sequences[name])
        for name in self.extra:
            self.columns[name].append(extra[name])

    def arrays(self) -> dict[str, np.ndarray]:
        max_len, pad = self.settings.max_len, self.settings.pad_id
        out: dict[str, np.ndarray] = {
            "reason": np.array(self.columns["reason"], dtype=object),
            "split": np.array(self.columns["split"], dtype=object),
            "truncated": np.array(self.columns["truncated"], dtype=bool),
        }
        for name in self.sequences:
            fill = IGNORE if name == "labels" else pad
            out[name] = pad_rows(self.columns[name], max_len, fill)
        for name in self.extra:
            out[name] = np.array(self.columns[name], dtype=np.int32)
        return out


def pad_rows(rows: list[list[int]], length: int, fill: int) -> np.ndarray:
    """(n, length) int32, each row left-aligned and right-padded with `fill`."""
    out = np.full((len(rows), length), fill, dtype=np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def pack_rows(batch: dict[str, np.ndarray], max_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Ray Data batch function: SFT rows packed whole into rows of `max_len` tokens (first-fit, longest first),
    never split. position_ids restart at 0 for each conversation: transformers then masks attention block-
    diagonally (one block per conversation), so packing changes throughput, not what the model learns."""
    order = np.argsort(-batch["length"], kind="stable")
    bins: list[list[int]] = []  # row indices per packed row
    room: list[int] = []
    for i in order:
        n = int(batch["length"][i])
        slot = next((b for b, free in enumerate(room) if free >= n), None)
        if slot is None:
            bins.append([])
            room.append(max_len)
            slot = len(bins) - 1
        bins[slot].append(int(i))
        room[slot] -= n
    ids = np.full((len(bins), max_len), pad_id, dtype=np.int32)
    labels = np.full((len(bins), max_len), IGNORE, dtype=np.int32)
    positions = np.zeros((len(bins), max_len), dtype=np.int32)
    lengths = np.zeros(len(bins), dtype=np.int32)
    for b, members in enumerate(bins):
        at = 0
        for i in members:
            n = int(batch["length"][i])
            ids[b, at : at + n] = batch["input_ids"][i, :n]
            labels[b, at : at + n] = batch["labels"][i, :n]
            positions[b, at : at + n] = np.arange(n)
            at += n
        lengths[b] = at
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "length": lengths}


def usable(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data batch function: the rows kept for training, with their split but without the drop bookkeeping."""
    keep = batch["reason"] == ""
    return {name: column[keep] for name, column in batch.items() if name not in ("reason", "truncated")}


def keep_split(batch: dict[str, np.ndarray], split: str) -> dict[str, np.ndarray]:
    """Ray Data batch function: the rows of one split, without the split column."""
    keep = batch["split"] == split
    return {name: column[keep] for name, column in batch.items() if name != "split"}


def tally(ds: ray.data.Dataset) -> tuple[dict[str, int], dict[str, int]]:
    """(row counts: in / train / val / dropped / truncated, drop reasons) from the bookkeeping columns."""
    splits: Counter = Counter()
    reasons: Counter = Counter()
    truncated = 0
    for batch in ds.select_columns(list(BOOKKEEPING)).iter_batches(batch_format="numpy", batch_size=4096):
        reasons.update(r for r in batch["reason"] if r)
        splits.update(s for s in batch["split"] if s)
        truncated += int(batch["truncated"].sum())
    total = sum(splits.values()) + sum(reasons.values())
    rows = {"in": total, "train": splits["train"], "val": splits["val"], "dropped": sum(reasons.values()),
            "truncated": truncated}  # fmt: skip
    return rows, dict(sorted(reasons.items()))


def prepare(
    files: list[str],
    settings: EncodeSettings,
    kind: str,
    field_name: str,
    pack: bool = False,
    transform: Callable[[ray.data.Dataset], ray.data.Dataset] | None = None,
) -> Prepared:
    """Read, encode and account for a stage's data. `kind` is "sft" or "pairs"; `pack` packs SFT rows;
    `transform` runs once over the usable rows of both splits (DPO adds reference log-probs there) and its
    output is materialized, so it is not repeated every epoch."""
    encode = encode_conversations if kind == "sft" else encode_pairs
    encoded = (
        read_records(files)
        .map_batches(encode, batch_size=RECORDS_PER_BATCH, batch_format="numpy", fn_kwargs={"settings": settings})
        .materialize()
    )
    rows, dropped = tally(encoded)
    if rows["train"] == 0:
        shown = ", ".join(f"{k}: {v}" for k, v in dropped.items()) or "no records"
        raise StageError(
            f"{field_name}: none of the {rows['in']} records is usable for training ({shown}). Check the data "
            f"layout (conversations, alpaca or preference pairs) and schedule.seq_len."
        )
    kept = encoded.map_batches(usable, batch_format="numpy")
    if transform is not None:
        kept = transform(kept).materialize()
    datasets = {}
    for split in ("train", "val"):
        if rows[split] == 0:
            continue
        ds = kept.map_batches(keep_split, batch_format="numpy", fn_kwargs={"split": split})
        if pack:
            ds = ds.map_batches(
                pack_rows, batch_size=RECORDS_PER_BATCH, batch_format="numpy",
                fn_kwargs={"max_len": settings.max_len, "pad_id": settings.pad_id},
            )  # fmt: skip
        datasets[split] = ds
    return Prepared(datasets=datasets, rows=rows, dropped=dropped)

"""Reading raw documents into Ray Data without ever failing on a bad one.

Every input unit (a JSONL line, a Parquet row, a blank-line separated paragraph of a text file) becomes one
row with a stable, sortable `id` (file index + position, so "earliest in the input" is "smallest id"), its
`source`, the `text` and a `reason`: null for a usable document, or `quarantine:<why>` for malformed JSON,
invalid UTF-8, a missing or non-string text field, an empty document or one over `max_doc_bytes`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

CHUNK_BYTES = 8 << 20
BLOCK_ROWS = 10_000
SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("text", pa.string()), ("reason", pa.string())])


@dataclass(frozen=True)
class ReadOptions:
    format: str  # jsonl | parquet | text
    text_field: str = "text"
    id_field: str | None = None
    max_doc_bytes: int = 1_000_000


def detect_format(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    lower = path.lower()
    for suffix in (".gz", ".zst", ".bz2"):
        lower = lower.removesuffix(suffix)
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    return "parquet" if lower.endswith(".parquet") else "text"


class DocumentDatasource(FileBasedDatasource):
    """Streams documents out of files of one format, a block of rows at a time."""

    def __init__(self, paths: list[str], file_ids: dict[str, int], options: ReadOptions, **kwargs: Any):
        super().__init__(paths, **kwargs)
        self._file_ids = file_ids
        self._options = options

    def _open_input_source(self, filesystem, path: str, **open_args: Any) -> pa.NativeFile:
        if self._options.format == "parquet":
            return filesystem.open_input_file(path)  # Parquet needs random access to its footer
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        file_id = self._file_ids.get(path, self._file_ids.get(path.lstrip("/"), 0))
        units = _units(f, path, self._options)
        rows: list[dict[str, Any]] = []
        for position, unit in units:
            rows.append(to_row(unit, f"{file_id:05d}:{position:010d}", f"{path}:{position}", self._options))
            if len(rows) >= BLOCK_ROWS:
                yield pa.Table.from_pylist(rows, schema=SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=SCHEMA)


def _units(f: pa.NativeFile, path: str, options: ReadOptions) -> Iterator[tuple[int, Any]]:
    if options.format == "parquet":
        return _parquet_rows(f, options)
    lines = _lines(f)
    return enumerate(lines, start=1) if options.format == "jsonl" else _paragraphs(lines)


def _lines(f: pa.NativeFile) -> Iterator[bytes]:
    """Raw lines as bytes (no decoding yet: invalid UTF-8 is a per-document problem, not a file problem)."""
    carry = b""
    while chunk := f.read(CHUNK_BYTES):
        parts = (carry + chunk).split(b"\n")
        carry = parts.pop()
        yield from (p.rstrip(b"\r") for p in parts)
    if carry:
        yield carry.rstrip(b"\r")


def _paragraphs(lines: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    """Plain text: documents are separated by one or more blank lines; position = first line number."""
    buf: list[bytes] = []
    start = 1
    for number, line in enumerate(lines, start=1):
        if line.strip():
            if not buf:
                start = number
            buf.append(line)
        elif buf:
            yield start, b"\n".join(buf)
            buf = []
    if buf:
        yield start, b"\n".join(buf)


def _parquet_rows(f: pa.NativeFile, options: ReadOptions) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    names = set(pf.schema_arrow.names)
    columns = [c for c in (options.text_field, options.id_field) if c and c in names]
    position = 0
    for batch in pf.iter_batches(columns=columns or None, batch_size=BLOCK_ROWS):
        for record in batch.to_pylist():
            position += 1
            yield position, record


def to_row(unit: Any, row_id: str, source: str, options: ReadOptions) -> dict[str, Any]:
    """One input unit -> {id, source, text, reason}; never raises on bad content."""
    text, reason, source_id = _extract(unit, options)
    if reason is None:
        if len(text.encode("utf-8")) > options.max_doc_bytes:
            text, reason = None, "quarantine:too_large"
        elif not text.strip():
            text, reason = None, "quarantine:empty"
    if source_id is not None:
        source = f"{source} id={source_id}"
    return {"id": row_id, "source": source, "text": text, "reason": reason}


def _extract(unit: Any, options: ReadOptions) -> tuple[Any, str | None, Any]:
    if isinstance(unit, bytes):
        if len(unit) > options.max_doc_bytes * 4:
            return None, "quarantine:too_large", None  # don't even decode pathological lines
        try:
            decoded = unit.decode("utf-8")
        except UnicodeDecodeError:
            return None, "quarantine:invalid_utf8", None
        if options.format == "text":
            return decoded, None, None
        if not decoded.strip():
            return None, "quarantine:empty", None
        try:
            unit = json.loads(decoded)
        except ValueError:
            return None, "quarantine:malformed_json", None
        if not isinstance(unit, dict):
            return None, "quarantine:malformed_json", None
    source_id = unit.get(options.id_field) if options.id_field else None
    if options.text_field not in unit or unit[options.text_field] is None:
        return None, "quarantine:missing_text_field", source_id
    text = unit[options.text_field]
    if not isinstance(text, str):
        return None, "quarantine:text_not_a_string", source_id
    return text, None, source_id


def read_documents(paths: list[str], options: ReadOptions, first_file_id: int = 0):
    """A Ray Dataset of {id, source, text, reason} over files of one format (ids numbered from first_file_id)."""
    import ray

    from pipelines import storage

    located = [storage.filesystem(p) for p in paths]
    file_ids = {inner: first_file_id + i for i, (_, inner) in enumerate(located)}
    source = DocumentDatasource([inner for _, inner in located], file_ids, options, filesystem=located[0][0])
    return ray.data.read_datasource(source)

"""The `data` stage on Ray Data: read → quarantine → quality filters → exact dedup → near dedup → PII → Parquet.

Every input row ends in exactly one place: the output (`data/`), or the rejected set with one reason
(`quarantine:*`, `filter:*`, `duplicate:exact`, `duplicate:near`). `stats.json` holds the funnel, and
in == kept + filtered + duplicates + quarantined is checked before the stage commits.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs.context import StageContext
from jobs.data import readers
from pipelines import storage
from pipelines.errors import StageError
from pipelines.lsh import resolved_bands_rows

KEEP_COLUMNS = ["id", "source", "text"]
# Rows per batch of the maps over the text: a worker's memory follows the batch (a 10k-row block of ~1 KB documents
# took ~600 MB through the filters' n-gram arrays), not the corpus.
BATCH_ROWS = 1000
REJECT_COLUMNS = ["id", "source", "text", "reason", "dup_of"]


def run(ctx: StageContext) -> dict[str, Any]:
    spec = ctx.spec
    use_shuffle(spec.shuffle)
    ds = read_inputs(ctx)
    ds = ds.map_batches(prepare, batch_format="pyarrow", batch_size=BATCH_ROWS, fn_kwargs={"spec": spec})
    ds = ds.materialize()
    ctx.progress(phase="dedup", rows_read=ds.count())
    marked, dedup_stats = deduplicate(ds, spec)
    kept = where_reason(marked, is_null=True).select_columns(KEEP_COLUMNS)
    rejected = _as_rejected(where_reason(marked, is_null=False))
    kept, pii_found = redact_pii(kept, spec)
    rows = write_outputs(ctx, kept, rejected)
    stats = build_stats(rows, pii_found, dedup_stats, spec)
    storage.write_json(ctx.path("stats.json"), stats)
    storage.write_text(ctx.path("report.md"), render_report(ctx.name, stats))
    ctx.log(f"rows in {rows['in']} -> out {rows['out']}")
    return {"rows": rows, "pii": stats["pii"], "near_dup_clusters": dedup_stats.get("near", {}).get("clusters")}


def use_shuffle(kind: str) -> None:
    """Every groupby of this stage shuffles with `kind`; datasets capture the context when they are created."""
    from ray.data.context import DataContext, ShuffleStrategy

    strategy = {"sort": ShuffleStrategy.SORT_SHUFFLE_PULL_BASED, "hash": ShuffleStrategy.HASH_SHUFFLE}[kind]
    DataContext.get_current().shuffle_strategy = strategy


def input_files(ctx: StageContext) -> list[tuple[str, str]]:
    """(format, uri) of every file to read: globs and directories expanded, earlier data stages' shards."""
    spec = ctx.spec
    files: list[tuple[str, str]] = []
    for i, item in enumerate(spec.inputs):
        if item in ctx.inputs:
            files += [("parquet", f) for f in storage.list_files(ctx.input(item).path("data"), ".parquet")]
            continue
        matches = storage.expand(item)
        if not matches:
            raise StageError(f"stages.{ctx.name}.inputs[{i}]: nothing matches '{item}'")
        files += [(readers.detect_format(m, spec.format), m) for m in matches]
    return files


def read_inputs(ctx: StageContext):
    spec = ctx.spec
    datasets, first_id = [], 0
    by_format: dict[str, list[str]] = {}
    for fmt, uri in input_files(ctx):
        by_format.setdefault(fmt, []).append(uri)
    for fmt, uris in sorted(by_format.items()):
        text_field = "text" if fmt == "parquet" and _all_stage_outputs(ctx, uris) else spec.text_field
        options = readers.ReadOptions(fmt, text_field, spec.id_field, spec.max_doc_bytes)
        datasets.append(readers.read_documents(uris, options, first_file_id=first_id))
        first_id += len(uris)
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def _all_stage_outputs(ctx: StageContext, uris: list[str]) -> bool:
    roots = [out.path("data") for out in ctx.inputs.values()]
    return bool(roots) and all(any(u.startswith(r) for r in roots) for u in uris)


def prepare(batch: pa.Table, spec) -> pa.Table:
    """The one pass over the text before dedup: normalize, quality filters (`reason`), and the dedup keys of
    the documents still in (exact: a 128-bit hash; near: LSH band keys). Dedup then works on those alone."""
    from jobs.data import dedup, lsh_ray

    batch = check_quality(normalize(batch), spec)
    live = pc.is_null(batch.column("reason")).to_numpy(zero_copy_only=False)
    if spec.exact_dedup:
        batch = dedup.add_keys(batch, "text", live)
    if spec.minhash is not None:
        bands, rows = resolved_bands_rows(spec.minhash)
        batch = lsh_ray.add_band_keys(batch, spec.minhash, bands, rows, "text", live)
    return batch


def normalize(batch: pa.Table) -> pa.Table:
    """Unicode NFC and Unix newlines, so equal-looking documents are equal bytes."""
    texts = [None if t is None else unicodedata.normalize("NFC", t.replace("\r\n", "\n")) for t in
             batch.column("text").to_pylist()]  # fmt: skip
    return batch.set_column(batch.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))


def check_quality(batch: pa.Table, spec) -> pa.Table:
    """`reason` = "filter:<name>" of the first quality filter a document fails (documents still in only)."""
    from jobs.data import filters

    chain = filters.build_filters(spec.quality)
    if not chain:
        return batch
    reasons = batch.column("reason").to_pylist()
    live = [i for i, r in enumerate(reasons) if r is None]
    texts = batch.column("text").to_pylist()
    for i, failed in zip(live, filters.first_failures(chain, [texts[i] for i in live]), strict=True):
        reasons[i] = f"filter:{failed}" if failed else None
    return batch.set_column(batch.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))


def where_reason(ds, is_null: bool):
    def keep(batch: pa.Table) -> pa.Table:
        mask = pc.is_null(batch.column("reason"))
        return batch.filter(mask if is_null else pc.invert(mask))

    return ds.map_batches(keep, batch_format="pyarrow")


def _as_rejected(ds):
    """Project rows onto REJECT_COLUMNS."""
    return ds.select_columns(REJECT_COLUMNS)


def deduplicate(ds, spec):
    """(rows with `reason` and `dup_of` set for the duplicates, dedup stats) of the prepared rows `ds`.

    Exact dedup first; near dedup then sees only the exact survivors. Each step turns keys into marks
    (jobs.data.marks), and one map applies them, so the text is never shuffled."""
    from jobs.data import dedup, marks, minhash
    from jobs.data.lsh_ray import BANDS_COL

    found: list[marks.Marks] = []
    stats: dict[str, Any] = {}
    if spec.exact_dedup:
        found.append(marks.build(dedup.exact_marks(ds, "id")))
    if spec.minhash is not None:
        near, stats["near"] = minhash.near_marks(ds, spec.minhash, exclude=list(found))
        found.append(marks.build(near))
    helper = [c for c in (dedup.HI_COL, dedup.LO_COL, BANDS_COL) if c in ds.schema().names]

    def apply(batch: pa.Table) -> pa.Table:
        reason, dup_of = marks.lookup(found, batch.column("id"))
        batch = batch.drop_columns(helper)
        reason = pc.coalesce(batch.column("reason"), reason)
        batch = batch.set_column(batch.schema.get_field_index("reason"), "reason", reason)
        return batch.append_column("dup_of", dup_of)

    return ds.map_batches(apply, batch_format="pyarrow"), stats


PII_EXAMPLES = 5  # redacted examples per PII type in stats.json and the reports


def redact_pii(kept, spec) -> tuple[Any, dict[str, Any]]:
    """Redacted rows, and {"counts": per type, "examples": a few masked contexts per type}."""
    if spec.pii is None:
        return kept.materialize(), {}
    from jobs.data import pii

    config = spec.pii

    def redact(batch: pa.Table) -> pa.Table:
        redactor = pii.Redactor(config)
        texts, counts, examples = [], [], []
        wanted: dict[str, int] = {}  # examples taken per type in this batch
        for text in batch.column("text").to_pylist():
            spans = redactor.spans(text)
            new, found = pii.apply_spans(text, spans)
            texts.append(new)
            counts.append(json.dumps(found, sort_keys=True))
            picked = [ex for ex in pii.masked_examples(text, spans) if wanted.get(ex[0], 0) < PII_EXAMPLES]
            for kind, _ in picked:
                wanted[kind] = wanted.get(kind, 0) + 1
            examples.append(json.dumps(picked) if picked else "")
        batch = batch.set_column(batch.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
        batch = batch.append_column("pii", pa.array(counts, pa.string()))
        return batch.append_column("pii_examples", pa.array(examples, pa.string()))

    marked = kept.map_batches(redact, batch_format="pyarrow", batch_size=BATCH_ROWS).materialize()
    totals: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for batch in marked.select_columns(["pii", "pii_examples"]).iter_batches(batch_format="pyarrow",
                                                                          batch_size=10_000):  # fmt: skip
        columns = batch.column("pii").to_pylist(), batch.column("pii_examples").to_pylist()
        for found, picked in zip(*columns, strict=True):
            for kind, n in json.loads(found).items():
                totals[kind] = totals.get(kind, 0) + n
            for kind, context in json.loads(picked) if picked else ():
                if len(examples.setdefault(kind, [])) < PII_EXAMPLES:
                    examples[kind].append(context)
    summary = {"counts": dict(sorted(totals.items())), "examples": dict(sorted(examples.items()))}
    return marked.select_columns(KEEP_COLUMNS), summary


def write_outputs(ctx: StageContext, kept, rejected) -> dict[str, Any]:
    """Write kept shards and the rejected sample; return the funnel counts (checked to balance).

    Counting and sampling run per block and merge small per-reason tallies on the driver: no shuffle, so an
    empty rejected set costs nothing and the driver never holds more than blocks x reasons x sample rows.
    """
    spec = ctx.spec
    rejected = rejected.materialize()
    by_reason: dict[str, int] = {}
    tallies = rejected.map_batches(_count_reasons, batch_format="pyarrow", batch_size=None)
    for row in tallies.take_all():
        by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + row["n"]
    out = kept.count()
    # blocks are combined up to shard_rows per file, not shuffled into place
    kept.write_parquet(ctx.path("data"), min_rows_per_file=spec.shard_rows, max_rows_per_file=spec.shard_rows)
    if by_reason:
        sample = rejected if spec.rejected_sample is None else _sample_per_reason(rejected, spec.rejected_sample)
        sample.write_parquet(ctx.path("rejected"))
    return funnel(out, by_reason)


def _count_reasons(batch: pa.Table) -> pa.Table:
    counts = pc.value_counts(batch.column("reason")).to_pylist()
    return pa.table({"reason": [c["values"] for c in counts], "n": [c["counts"] for c in counts]},
                    schema=pa.schema([("reason", pa.string()), ("n", pa.int64())]))  # fmt: skip


def _sample_per_reason(rejected, n: int):
    """The first n rows of each reason (in dataset order): at most n per reason from each block, then trimmed."""
    import ray
    import ray.data

    def head_per_reason(batch: pa.Table) -> pa.Table:
        reasons = batch.column("reason").to_pylist()
        seen: dict[str, int] = {}
        keep = []
        for reason in reasons:
            seen[reason] = seen.get(reason, 0) + 1
            keep.append(seen[reason] <= n)
        return batch.filter(pa.array(keep))

    candidates = rejected.map_batches(head_per_reason, batch_format="pyarrow", batch_size=None).to_arrow_refs()
    tables = [t for t in ray.get(candidates) if t.num_rows]
    return ray.data.from_arrow(head_per_reason(pa.concat_tables(tables, promote_options="default")))


def funnel(out: int, by_reason: dict[str, int]) -> dict[str, Any]:
    def total(prefix: str) -> int:
        return sum(v for k, v in by_reason.items() if k.startswith(prefix))

    rows = {
        "in": out + sum(by_reason.values()),
        "out": out,
        "quarantined": total("quarantine:"),
        "filtered": total("filter:"),
        "duplicates_exact": by_reason.get("duplicate:exact", 0),
        "duplicates_near": by_reason.get("duplicate:near", 0),
    }
    accounted = sum(v for k, v in rows.items() if k != "in")
    if accounted != rows["in"]:
        raise RuntimeError(f"funnel does not balance: {rows} vs reasons {by_reason}")  # internal invariant
    return {**rows, "by_reason": dict(sorted(by_reason.items()))}


def build_stats(rows: dict[str, Any], pii_found: dict[str, Any], dedup_stats: dict[str, Any], spec) -> dict:
    return {"rows": rows, "pii": pii_found.get("counts", {}), "pii_examples": pii_found.get("examples", {}),
            "dedup": dedup_stats, "config": spec.model_dump(mode="json")}  # fmt: skip


def render_report(name: str, stats: dict[str, Any]) -> str:
    rows = stats["rows"]
    lines = [f"# Data stage `{name}`", "", "| step | rows |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in rows.items() if k != "by_reason"]
    lines += ["", "## Rejected by reason", "", "| reason | rows |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in rows["by_reason"].items()]
    if stats["pii"]:
        lines += ["", "## PII redacted", "", "| type | count |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in stats["pii"].items()]
        lines += ["", "Examples (the value's letters and digits masked):", ""]
        lines += [f"- {k}: `{c}`" for k, contexts in stats.get("pii_examples", {}).items() for c in contexts]
    near = stats["dedup"].get("near")
    if near:
        lines += ["", "## Near-duplicate detection", "", "```", json.dumps(near, indent=2), "```"]
    return "\n".join(lines) + "\n"

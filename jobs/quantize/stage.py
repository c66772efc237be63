"""The `quantize` stage: llm-compressor's one-shot quantization of a causal LM, as a Ray task with its resources.

The driver checks the model and reads the calibration rows (a bad input fails before anything is scheduled). The
task copies the model to local disk when it is on S3, runs `jobs/quantize/oneshot.py` with llm-compressor's own
libraries first on the path (they cannot be imported beside vLLM; see that file), and writes the compressed-tensors
directory to `model/` of the stage output, where serve and eval stages find it as they find a trained model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from jobs.context import StageContext
from jobs.eval.inputs import json_lines, parquet_column
from jobs.quantize import oneshot
from jobs.train.chat_data import Drop, to_conversation
from jobs.train.chat_datasets import data_files
from jobs.train.sources import check_causal_lm, model_dir, resolve
from pipelines import storage
from pipelines.errors import StageError
from pipelines.spec.quantize import W4A16_GROUP_SIZE, QuantizeStage

LIBS_ENV = "LLMCTL_QUANTIZE_LIBS"  # where llm-compressor and its pins are installed on every node


def run(ctx: StageContext) -> dict[str, Any]:
    spec: QuantizeStage = ctx.spec
    source = model_dir(ctx, spec.model)
    check_causal_lm(source, f"stages.{ctx.name}.model", "to quantize")
    config = storage.read_json(storage.join(source, "config.json"))
    if spec.scheme == "w4a16":
        check_group_size(ctx.name, source, config)
    rows = calibration_rows(ctx, spec) if spec.calibration is not None else []
    ctx.log("quantizing %s to %s with %d calibration rows", source, spec.scheme, len(rows))
    import ray

    task = ray.remote(quantize).options(num_cpus=spec.num_cpus, num_gpus=1 if spec.use_gpu else 0)
    result = ray.get(task.remote(ctx.name, spec, source, rows, ctx.path("model")))
    if "error" in result:
        raise StageError(result["error"])
    before, after = model_bytes(source), model_bytes(ctx.path("model"))
    ctx.log("%s: %.2f MB -> %.2f MB of weights in %.1fs", spec.scheme, before / 1e6, after / 1e6, result["oneshot_s"])
    return {**result, "scheme": spec.scheme, "source": source, "source_bytes": before, "quantized_bytes": after,
            "size_ratio": round(after / before, 4)}  # fmt: skip


def check_group_size(stage: str, source: str, config: dict[str, Any]) -> None:
    widths = {k: config.get(k) for k in ("hidden_size", "intermediate_size") if isinstance(config.get(k), int)}
    odd = {k: v for k, v in widths.items() if v % W4A16_GROUP_SIZE}
    if odd:
        raise StageError(
            f"stages.{stage}.scheme: w4a16 quantizes weights in groups of {W4A16_GROUP_SIZE} inputs, but the model "
            f"at '{source}' has {', '.join(f'{k} {v}' for k, v in odd.items())}, not a multiple of "
            f"{W4A16_GROUP_SIZE}; choose w8a8-int8 for this model"
        )


def calibration_rows(ctx: StageContext, spec: QuantizeStage) -> list[dict[str, Any]]:
    """The first `samples` usable rows: {"text": ...} from a text column, {"messages": [...]} from chat records."""
    cal = spec.calibration
    where = f"stages.{ctx.name}.calibration.data"
    uri = resolve(ctx, cal.data)
    rows: list[dict[str, Any]] = []
    seen = 0
    for record in _records(data_files(uri, where), cal.text_column, where):
        seen += 1
        row = _usable(record, cal.text_column)
        if row is not None:
            rows.append(row)
            if len(rows) == cal.samples:
                break
    if not rows:
        raise StageError(
            f"{where}: none of the {seen} rows in '{uri}' holds text to calibrate on: a row needs a non-empty "
            f"'{cal.text_column}' string (set calibration.text_column to the column that has it) or a chat "
            "conversation (messages, or instruction and output)"
        )
    return rows


def _records(files: list[str], column: str, where: str):
    for uri in files:
        if uri.endswith(".parquet"):
            yield from ({column: text} for text in parquet_column(uri, column, where))
        else:
            yield from (record for _, record in json_lines(uri))


def _usable(record: Any, column: str) -> dict[str, Any] | None:
    if not isinstance(record, dict):
        return None
    text = record.get(column)
    if isinstance(text, str) and text.strip():
        return {"text": text}
    try:
        return {"messages": to_conversation(record)}
    except Drop:
        return None


def libs_dir() -> str:
    return os.environ.get(LIBS_ENV) or os.path.join(sys.prefix, "quantize")


def quantize(stage: str, spec: QuantizeStage, source: str, rows: list[dict[str, Any]], out_uri: str) -> dict:
    """Runs in the Ray task: one oneshot.py process; returns its summary, or {"error": message}."""
    libs = libs_dir()
    if not os.path.isdir(os.path.join(libs, "llmcompressor")):
        return {"error": f"stages.{stage}: llm-compressor is not installed at '{libs}' on this node. `make install` "
                         f"puts it there; on a cluster, install it into every node's image with `pip install "
                         f"--no-deps --target {libs} -r infra/quantize-requirements.txt`, or set {LIBS_ENV} to "
                         "where it is."}  # fmt: skip
    with storage.local_copy(source) as model_dir, tempfile.TemporaryDirectory(prefix="llmctl-quantize-") as tmp:
        calibration = os.path.join(tmp, "calibration.jsonl")
        with open(calibration, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        out = os.path.join(tmp, "model")
        cal = spec.calibration
        command = [sys.executable, oneshot.__file__, "--model", model_dir, "--out", out, "--scheme", spec.scheme,
                   "--calibration", calibration, "--seq-len", str(cal.seq_len if cal else 2048),
                   "--ignore", json.dumps(spec.ignore), "--smoothing", str(spec.smoothing_strength),
                   "--dampening", str(spec.dampening_frac)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (libs, os.environ.get("PYTHONPATH")) if p)}
        started = time.time()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode == 2:
            return {"error": f"stages.{stage}.{done.stderr.strip().splitlines()[-1]}"}
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            return {"error": f"stages.{stage}: llm-compressor failed (exit code {done.returncode}):\n{tail}"}
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        storage.upload_dir(out, out_uri)
    return {**summary, "quantize_s": round(time.time() - started, 2)}


def model_bytes(uri: str) -> int:
    """Bytes of the weight files (*.safetensors, *.bin) of a model directory."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sum(i.size for i in infos if i.type == pafs.FileType.File and i.path.endswith((".safetensors", ".bin")))

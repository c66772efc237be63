"""The pretrain stage end to end on the session Ray cluster: 2 CPU workers (gloo), DeepSpeed ZeRO-2/3, checkpoints,
resume, a killed worker, TensorBoard and the Hugging Face export. Each test is one Ray Train run (~1 min)."""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import signal
import struct
import threading
import time

import pytest

from jobs.train import packing, pretrain
from tests.jobs.train.conftest import pretrain_context, pretrain_spec

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

TOKENS_PER_STEP = 2 * 8 * 64  # workers × micro-batch × seq_len


def read_scalars(directory: str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the TensorBoard event files in `directory` (TFRecord framing, no tensorboard)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def validation_sequences(corpus_dir: str, model_dir: str, seq_len: int, fraction: float, limit: int):
    """Packed validation sequences built independently of Ray Data, with the exported tokenizer."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [t for f in sorted(glob.glob(f"{corpus_dir}/data/*.parquet")) for t in pq.read_table(f)["text"].to_pylist()]
    held = [t for t in texts if packing.is_validation(t, fraction)]
    ids = tokenizer(held, add_special_tokens=False)["input_ids"]
    return torch.as_tensor(packing.pack(ids, seq_len, tokenizer.eos_token_id)[:limit], dtype=torch.long)


def check_export(out: str, corpus_dir: str, eval_loss: float, generates: bool,
                 architecture: str = "LlamaForCausalLM") -> None:  # fmt: skip
    """The export loads in transformers and holds the trained weights (its validation loss matches the stage's);
    with `generates`, greedy decoding continues a prompt with words of the corpus."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = os.path.join(out, "model")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.architectures == [architecture] and model.config.use_cache

    sequences = validation_sequences(corpus_dir, model_dir, seq_len=64, fraction=0.1, limit=64)
    with torch.no_grad():
        loss = model(input_ids=sequences, labels=sequences).loss.item()
    assert loss == pytest.approx(eval_loss, rel=0.05)

    if not generates:
        return
    prompt = tokenizer("The quick", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    continuation = tokenizer.decode(generated[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert any(word in continuation for word in ("fox", "dog", "cat", "bird", "farmer", "river", "tree", "child"))


def test_zero2_survives_a_killed_worker_and_its_loss_falls_metrics_and_export(
    ray_session, corpus_dir, tokenizer_dir, tmp_path
):
    """One ZeRO-2 run that loses a worker after its first checkpoint: Ray Train restarts the group, which resumes
    from that checkpoint (not step 0), and the run still ends with falling loss, full metrics and an export."""
    spec = pretrain_spec(
        corpus_dir,
        tokenizer_dir,
        deepspeed={"zero_stage": 2},
        materialize=True,
        schedule={"steps": 40, "eval_every": 10, "checkpoint_every": 10, "log_every": 10},
        failure={"max_failures": 2},
    )
    out = str(tmp_path / "pretrain")
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["metrics"] = pretrain.run(pretrain_context(spec, out))
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    wait_for(lambda: os.path.exists(os.path.join(out, "_state", "train", "checkpoint_manager_snapshot.json")), 600)
    pids = train_worker_pids(ray_session.dashboard_url)
    assert len(pids) == 2
    os.kill(pids[-1], signal.SIGKILL)
    thread.join(timeout=900)

    assert "error" not in outcome, outcome.get("error")
    metrics = outcome["metrics"]
    json.dumps(metrics)  # it becomes the _SUCCESS marker
    assert (metrics["step"], metrics["stopped_by"], metrics["world_size"], metrics["zero_stage"]) == (40, "steps", 2, 2)
    assert 10 <= metrics["resumed_from_step"] < 40, "the restarted group must resume from a checkpoint, not step 0"
    assert metrics["steps_run"] == 40 - metrics["resumed_from_step"]
    assert metrics["tokens"] == 40 * TOKENS_PER_STEP and metrics["tokens_per_s"] > 0
    assert metrics["mfu"] is None  # no known peak on CPU
    scalars = read_scalars(os.path.join(out, "tensorboard"))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "eval_loss"} <= set(scalars)
    assert sorted(scalars["loss"]) == [10, 20, 30, 40]  # the history before the restart is kept
    uniform = math.log(512)  # the loss of a model that knows nothing
    assert scalars["loss"][10] > scalars["loss"][40] and scalars["eval_loss"][10] > scalars["eval_loss"][40]
    assert metrics["eval_loss"] < 0.6 * uniform
    assert scalars["lr"][40] == pytest.approx(spec.optim.min_lr, rel=0.01)
    check_export(out, corpus_dir, metrics["eval_loss"], generates=True)


def test_zero3_resubmitted_run_continues_from_its_checkpoint_and_gathers_the_export(
    ray_session, corpus_dir, tokenizer_dir, tmp_path
):
    """ZeRO-3 shards parameters and optimizer state: the checkpoint must restore them and the export must gather
    the shards into one Hugging Face model."""
    out = str(tmp_path / "pretrain")

    def spec(steps: int):
        return pretrain_spec(corpus_dir, tokenizer_dir, deepspeed={"zero_stage": 3}, schedule={"steps": steps})

    first = pretrain.run(pretrain_context(spec(6), out))
    assert (first["step"], first["resumed_from_step"], first["steps_run"], first["zero_stage"]) == (6, 0, 6, 3)

    # The driver empties an unfinished stage's output before re-running it, all but _state/.
    for name in os.listdir(out):
        if name != "_state":
            shutil.rmtree(os.path.join(out, name))
    second = pretrain.run(pretrain_context(spec(12), out))
    assert (second["step"], second["resumed_from_step"], second["steps_run"]) == (12, 6, 6)
    assert second["tokens"] == 12 * TOKENS_PER_STEP
    assert min(read_scalars(os.path.join(out, "tensorboard"))["loss"]) == 5  # history from the first run kept
    assert second["eval_loss"] < math.log(512)
    check_export(out, corpus_dir, second["eval_loss"], generates=False)  # 12 steps: weights matter, not prose


def wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def train_worker_pids(dashboard_url: str) -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(
        address=dashboard_url, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    )
    return sorted(int(a.pid) for a in actors)

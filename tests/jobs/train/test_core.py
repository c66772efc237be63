"""Pure pieces of the training core: LR schedule, packing, split, DeepSpeed config, FLOPs and MFU."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from jobs.train import deepspeed_config, metrics, packing
from jobs.train.model import flops_per_token, model_config, round_up
from jobs.train.optim import lr_factor
from jobs.train.sources import TokenizerInfo
from pipelines.spec.train import DeepSpeedConfig, ModelConfig, OptimConfig, ScheduleConfig


def test_lr_warmup_then_cosine_to_min():
    f = [lr_factor(s, warmup=10, total=110, min_ratio=0.1) for s in range(0, 120)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55)
    assert f[110] == pytest.approx(0.1) and f[119] == pytest.approx(0.1)  # held at min past the end
    assert all(a >= b for a, b in zip(f[10:-1], f[11:], strict=True))


def test_pack_joins_with_eos_and_drops_the_partial_window():
    packed = packing.pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4, eos_id=0)
    assert packed.dtype == np.int32
    assert packed.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert packing.pack([[1]], seq_len=4, eos_id=0).shape == (0, 4)


def test_validation_split_is_stable_and_near_the_fraction():
    texts = [f"document {i}" for i in range(20000)]
    held = [t for t in texts if packing.is_validation(t, 0.1)]
    assert abs(len(held) / len(texts) - 0.1) < 0.01
    assert held == [t for t in texts if packing.is_validation(t, 0.1)]


def test_tokenize_and_pack_keeps_only_its_split(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 1, "b": 2, "<eos>": 0}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = np.array([" ".join("ab"[int(c)] for c in bin(i)[2:]) for i in range(1, 201)], dtype=object)  # distinct
    common = {"tokenizer_json": tok.to_str(), "text_column": "text", "seq_len": 4, "eos_id": 0, "val_fraction": 0.3}
    train = packing.tokenize_and_pack({"text": texts}, split="train", **common)["input_ids"]
    val = packing.tokenize_and_pack({"text": texts}, split="val", **common)["input_ids"]
    n_val = sum(packing.is_validation(str(t), 0.3) for t in texts)
    val_tokens = sum(len(str(t).split()) + 1 for t in texts if packing.is_validation(str(t), 0.3))
    assert 0 < n_val < 200 and val.shape == (val_tokens // 4, 4)
    assert train.shape[0] + val.shape[0] >= (sum(len(str(t).split()) + 1 for t in texts) // 4) - 1
    # As Ray Data calls it: a batch with no whole sequence of its split gives no block rather than an empty one.
    from ray.data.block import BlockAccessor

    [block] = [BlockAccessor.batch_to_block(b) for b in packing.packed_batches({"text": texts}, split="val", **common)]
    assert "Tensor" in str(block.schema.field("input_ids").type)  # not ArrowPythonObjectType
    assert list(packing.packed_batches({"text": texts[:1]}, split="val", **{**common, "val_fraction": 1e-9})) == []


def test_deepspeed_config_from_spec():
    ds = DeepSpeedConfig(
        zero_stage=3,
        offload_params=True,
        offload_optimizer=True,
        overrides={"zero_optimization": {"reduce_bucket_size": 1000}},
    )
    config = deepspeed_config.build(ds, OptimConfig(grad_clip=0.5), ScheduleConfig(micro_batch_size=4, grad_accum=3),
                                    num_workers=2, use_gpu=False)  # fmt: skip
    assert config["train_batch_size"] == 24 and config["gradient_accumulation_steps"] == 3
    assert config["gradient_clipping"] == 0.5
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["reduce_bucket_size"] == 1000
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert not config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    gpu = deepspeed_config.build(DeepSpeedConfig(), OptimConfig(), ScheduleConfig(), num_workers=8, use_gpu=True)
    single = deepspeed_config.build(DeepSpeedConfig(zero_stage=2), OptimConfig(), ScheduleConfig(), 1, use_gpu=False)
    assert single["zero_optimization"] == {"stage": 0}  # nothing to shard over one rank
    assert gpu["bf16"]["enabled"] and gpu["zero_optimization"] == {
        "stage": 2, "contiguous_gradients": True, "overlap_comm": True}  # fmt: skip


def test_llama_config_and_flops():
    tok = TokenizerInfo(uri="x", tokenizer_json="", vocab_size=1000, eos_id=0, bos_id=None, pad_id=1)
    kwargs = model_config(ModelConfig(preset="1b"), tok, seq_len=2048)
    assert kwargs["vocab_size"] == round_up(1000, 64) == 1024
    assert kwargs["bos_token_id"] == 0 and kwargs["max_position_embeddings"] == 2048
    assert kwargs["rope_parameters"]["rope_theta"] == 500_000.0

    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**model_config(ModelConfig(preset="tiny"), tok, seq_len=64))
    model = LlamaForCausalLM(config)
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2)  # embeddings = the tied head
    assert flops_per_token(config, 64) == 6 * matmul + 12 * 2 * 64 * 64


def test_mfu_needs_a_peak(monkeypatch):
    monkeypatch.delenv(metrics.PEAK_ENV, raising=False)
    assert metrics.device_peak_flops(use_gpu=False) is None
    assert metrics.mfu(1000.0, 1e9, None, 2) is None
    assert metrics.mfu(1000.0, 1e9, 1e12, 2) == pytest.approx(0.5)
    monkeypatch.setenv(metrics.PEAK_ENV, "2e12")
    assert metrics.device_peak_flops(use_gpu=False) == 2e12


def test_throughput_skips_warmup_steps():
    meter = metrics.Throughput(warmup=2)
    for seconds in (10.0, 10.0, 1.0, 1.0):
        meter.add(100, seconds)
    assert meter.steady_rate() == pytest.approx(100.0) and meter.median_rate() == pytest.approx(100.0)
    assert meter.window_rate() == pytest.approx(400 / 22) and meter.window_rate() == 0.0
    assert math.isfinite(meter.steady_rate())


def test_checkpoints_go_to_s3_through_our_filesystem(monkeypatch):
    import pyarrow.fs as pafs

    from jobs.train import launch

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    args = launch.storage_args("s3://bucket/runs/p/pretrain/key/_state")
    assert args["storage_path"] == "bucket/runs/p/pretrain/key/_state"
    assert isinstance(args["storage_filesystem"], pafs.S3FileSystem)
    assert launch.storage_args("relative/_state") == {"storage_path": os.path.abspath("relative/_state")}


def test_tensorboard_sync_puts_every_logged_step_on_disk_before_the_writer_is_closed(tmp_path):
    """A checkpoint syncs the event files; a worker killed right after must not take queued events with it (the
    killed worker's writer is never closed, so the files are read as they are)."""
    from pipelines.scalars import read_scalars

    uri = str(tmp_path / "tb")
    tb = metrics.TensorBoard(uri, enabled=True)
    for step in range(1, 4):
        tb.log(step * 10, {"loss": 4.0 - step, "lr": 0.5})
        tb.sync()
        assert read_scalars(uri)["loss"] == [(s * 10, 4.0 - s) for s in range(1, step + 1)]
    tb.log(40, {"loss": 0.5})
    tb.close()
    assert read_scalars(uri)["loss"][-1] == (40, 0.5) and read_scalars(uri)["lr"] == [(10, 0.5), (20, 0.5), (30, 0.5)]


def test_check_causal_lm_names_the_field_and_the_fix(tmp_path):
    from jobs.train.sources import check_causal_lm
    from pipelines.errors import StageError

    missing = r"stages.eval.models\[0\]: '.*' is not a Hugging Face model directory \(no config.json\). Name an " \
        "earlier pretrain, sft, dpo, grpo, ppo or distill stage"
    with pytest.raises(StageError, match=missing):
        check_causal_lm(str(tmp_path), "stages.eval.models[0]", "to score")
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForSequenceClassification"]}')
    with pytest.raises(StageError, match="is a LlamaForSequenceClassification, not a causal language model, so it has "
                                         "no next-token distribution to distil; name a pretrain"):  # fmt: skip
        check_causal_lm(str(tmp_path), "stages.d.teacher", "to distil")
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    check_causal_lm(str(tmp_path), "stages.d.teacher", "to distil")


def test_metrics_reach_ray_train_at_most_once_per_report_interval_and_every_log_step_elsewhere(monkeypatch):
    """Ray Train takes one report per worker per controller poll and blocks the training thread on a second one;
    TensorBoard and the progress lines must still see every log step, and checkpoints always report."""
    from types import SimpleNamespace

    from jobs.train import loop as loop_module

    calls: list[tuple[str, int]] = []
    train = loop_module.TrainLoop.__new__(loop_module.TrainLoop)  # the step logic only: no engine, no Ray Train
    train.job = SimpleNamespace(schedule=SimpleNamespace(log_every=1, eval_every=10**9, checkpoint_every=5))
    train.state = SimpleNamespace(step=0)
    train.world, train.last_report, train.step_clock = 1, float("-inf"), 0.0
    train.train_metrics = lambda: {"loss": 1.0}
    for name in ("log_metrics", "checkpoint"):
        monkeypatch.setattr(train, name, lambda metrics, name=name: calls.append((name, metrics["step"])))

    def report(metrics: dict) -> None:
        calls.append(("report", metrics["step"]))
        train.last_report = 1.0

    monkeypatch.setattr(train, "report", report)
    monkeypatch.setattr(loop_module.time, "monotonic", lambda: 2.0)  # 1 s after the first report
    for step in range(1, 7):
        train.state.step = step
        train.after_step()
    assert [s for name, s in calls if name == "log_metrics"] == [1, 2, 3, 4, 6]  # step 5 is the checkpoint's
    assert [s for name, s in calls if name == "checkpoint"] == [5]
    assert [s for name, s in calls if name == "report"] == [1], "reports within the interval would block training"
    monkeypatch.setattr(loop_module, "REPORT_INTERVAL_S", 0.5)
    train.state.step = 7
    train.after_step()
    assert calls[-1] == ("report", 7)


def test_engine_on_cpu_trains_with_activation_checkpointing_and_builds_no_shm_op(tmp_path):
    """start_engine on a gloo group of one (a fresh process: DeepSpeed's communication backend is global): with
    activation checkpointing the model recomputes its layers and still trains, and DeepSpeed on CPU neither
    compiles its shared-memory all-reduce op nor probes for compilers (the op would land in TORCH_EXTENSIONS_DIR)."""
    import subprocess
    import sys
    import textwrap

    from tests.conftest import ROOT, free_port

    code = textwrap.dedent("""
        import os, torch
        from transformers import LlamaConfig, LlamaForCausalLM
        from jobs.train import deepspeed_config
        from pipelines.spec.train import DeepSpeedConfig, OptimConfig, ScheduleConfig
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32))
        model.config.use_cache = False
        ds = deepspeed_config.build(DeepSpeedConfig(zero_stage=0), OptimConfig(), ScheduleConfig(micro_batch_size=2),
                                    1, False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        engine = deepspeed_config.start_engine(model, optimizer, None, ds, activation_checkpointing=True)
        ids = torch.randint(0, 256, (2, 32))
        losses = []
        for _ in range(8):
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        from deepspeed.comm import comm  # the module whose global `cdb` holds the backend DeepSpeed started
        print(model.is_gradient_checkpointing, losses[-1] < losses[0], comm.cdb.shm_comm_op is None)
        """)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ROOT, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "True True True"
    assert not (tmp_path / "extensions").exists()

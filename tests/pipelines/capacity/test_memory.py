"""The arithmetic against its oracles: DeepSpeed's own model-state estimators, activations autograd really keeps
on CPU, and the training-time formula's worked example."""

from __future__ import annotations

import functools

import pytest

from pipelines.capacity.memory import Shape, activation_bytes_per_token, hours, model_states
from pipelines.spec.train import MODEL_PRESETS


def preset(name: str, vocab: int = 32000) -> Shape:
    d = MODEL_PRESETS[name]
    return Shape(vocab, d["hidden_size"], d["num_layers"], d["num_heads"], d["num_kv_heads"], d["intermediate_size"])


SHAPES = {"125m": preset("125m"), "350m": preset("350m"), "1b": preset("1b"),
          "7b": Shape(32000, 4096, 32, 32, 32, 11008, tied=False)}  # Llama-2-7B's dimensions  # fmt: skip


def hf_counts(shape: Shape) -> tuple[int, int]:
    """(parameters, largest module's parameters) of the real transformers model, built on the meta device."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, tie_word_embeddings=shape.tied)  # fmt: skip
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


@pytest.mark.parametrize("name", SHAPES)
def test_model_states_equal_deepspeeds_estimators(name):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = SHAPES[name]
    total, largest = hf_counts(shape)
    assert (shape.params, shape.largest_layer) == (total, largest)
    for gpus in (8, 16):
        for offload in (False, True):
            _, zero2 = estimate_zero2_model_states_mem_needs(total, 8, gpus // 8, cpu_offload=offload)
            _, zero3, _ = estimate_zero3_model_states_mem_needs(total, largest, 8, gpus // 8, cpu_offload=offload,
                                                                cpu_offload_params=offload)  # fmt: skip
            ours2 = model_states(total, largest, 2, gpus, "bf16", offload_optimizer=offload)
            ours3 = model_states(total, largest, 3, gpus, "bf16", offload_optimizer=offload, offload_params=offload)
            assert ours2 == pytest.approx(zero2, rel=0.05), (gpus, offload)
            assert ours3 == pytest.approx(zero3, rel=0.05), (gpus, offload)


def test_each_zero_stage_holds_less_per_gpu_than_the_one_before():
    shape = SHAPES["1b"]
    per_gpu = [model_states(shape.params, shape.largest_layer, z, 8) for z in range(4)]
    assert per_gpu == sorted(per_gpu, reverse=True) and per_gpu[0] == 20 * shape.params
    assert model_states(shape.params, shape.largest_layer, 0, 8, "fp32") == 16 * shape.params


@functools.cache
def cpu_model(shape: Shape):
    """The transformers model of `shape` in fp32 on the CPU, uninitialised: sizes, not values, are measured."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=1024)  # fmt: skip
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    for p in model.parameters():
        torch.nn.init.zeros_(p) if p.dim() == 1 else torch.nn.init.uniform_(p, -0.02, 0.02)
    model.config.use_cache = False
    return model.train()


def kept_per_token(shape: Shape, seq_len: int, checkpointing: bool) -> float:
    """Bytes per token of the tensors autograd keeps for backward (parameters excluded), in one fp32 forward."""
    import torch

    model = cpu_model(shape)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, shape.vocab, (1, seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(kept.values()) / seq_len


@pytest.mark.parametrize("name", ["tiny", "125m"])
@pytest.mark.parametrize("seq_len", [64, 256])
def test_activation_estimates_are_within_a_quarter_of_what_autograd_keeps(name, seq_len):
    """Without checkpointing: everything kept. With it: what the forward keeps plus one layer's recomputation
    (the peak during backward), measured as the per-layer size of the run without checkpointing."""
    shape = preset(name, vocab=8192)
    full = kept_per_token(shape, seq_len, checkpointing=False)
    assert activation_bytes_per_token(shape, "fp32", False) == pytest.approx(full, rel=0.25)
    one_layer = (full - 4 * shape.vocab) / shape.layers
    peak = kept_per_token(shape, seq_len, checkpointing=True) + one_layer
    assert activation_bytes_per_token(shape, "fp32", True) == pytest.approx(peak, rel=0.25)


def test_training_time_reproduces_the_worked_example():
    """175B parameters on 300B tokens, 1,024 A100s at 312 TFLOP/s and 45 % utilisation: about 34 days."""
    days = hours(8 * 175e9 * 300e9, 1024, 312.0, 0.45) / 24
    assert days == pytest.approx(34, abs=0.5)

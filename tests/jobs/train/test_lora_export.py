"""LoRA export without Ray: merged (an ordinary model) or the adapter alone (naming its base), and the two agree."""

from __future__ import annotations

import json
import os

import pytest
import torch

from jobs.train.export import save_hf
from jobs.train.model import ModelSource
from pipelines.spec.post import LoraConfig


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    out = str(tmp_path_factory.mktemp("base"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def trained_state(source: ModelSource) -> dict[str, torch.Tensor]:
    """The state a training run would gather: the base weights, and adapters that moved away from B = 0."""
    model = source.build(seed=0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_an_unmerged_export_is_the_adapter_alone_and_equals_the_merged_model(base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = LoraConfig(rank=4, alpha=8)
    merged_source = ModelSource(pretrained_uri=base_dir, lora=lora)
    state = trained_state(merged_source)
    config = AutoModelForCausalLM.from_pretrained(base_dir).config
    save_hf(merged_source.exportable(config, state), "float32", None, str(tmp_path / "merged"))
    adapter_source = ModelSource(pretrained_uri=base_dir, lora=lora.model_copy(update={"merge": False}))
    save_hf(adapter_source.exportable(config, state), "float32", None, str(tmp_path / "adapter"))

    files = sorted(os.listdir(tmp_path / "adapter"))
    assert "adapter_model.safetensors" in files and "config.json" not in files and "model.safetensors" not in files
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == base_dir and adapter_config["r"] == 4
    assert os.path.getsize(tmp_path / "adapter" / "adapter_model.safetensors") < os.path.getsize(
        tmp_path / "merged" / "model.safetensors") / 4  # fmt: skip

    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        on_base = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))(input_ids=ids).logits
        untouched = AutoModelForCausalLM.from_pretrained(base_dir)(input_ids=ids).logits
    assert torch.allclose(merged, on_base, atol=1e-4)
    assert not torch.allclose(merged, untouched, atol=1e-3), "the adapter changes the model"

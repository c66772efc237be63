"""The model a training run starts from: a fresh Llama from spec dimensions, or a Hugging Face directory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cluster import storage
from jobs.train.sources import TokenizerInfo
from pipelines.spec.train import ModelConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Embedding rows are padded to a multiple of this so the output projection's matmul tiles evenly on GPUs;
# the extra rows are never produced by the tokenizer.
VOCAB_MULTIPLE = 64


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def llama_config(model: ModelConfig, tokenizer: TokenizerInfo, seq_len: int) -> dict[str, Any]:
    """`transformers.LlamaConfig` keyword arguments for a model sized by the spec and the tokenizer."""
    dims = model.dims()
    return {
        "vocab_size": round_up(tokenizer.vocab_size, VOCAB_MULTIPLE),
        "hidden_size": dims["hidden_size"],
        "intermediate_size": dims["intermediate_size"],
        "num_hidden_layers": dims["num_layers"],
        "num_attention_heads": dims["num_heads"],
        "num_key_value_heads": dims["num_kv_heads"],
        "max_position_embeddings": model.max_position_embeddings or seq_len,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(dims["rope_theta"])},
        "tie_word_embeddings": model.tie_embeddings,
        "initializer_range": model.init_std,
        "rms_norm_eps": 1e-5,
        "bos_token_id": tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    }


@dataclass(frozen=True)
class ModelSource:
    """How a worker gets its starting weights: `config` builds a fresh Llama (pretraining), `pretrained_uri`
    loads a Hugging Face directory (SFT, reward model, DPO)."""

    config: dict[str, Any] | None = None
    pretrained_uri: str | None = None

    def build(self, seed: int) -> PreTrainedModel:
        """The model in fp32 on the CPU; every rank builds the same weights from the same seed."""
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        if self.pretrained_uri is not None:
            with storage.local_copy(self.pretrained_uri) as path:
                return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        assert self.config is not None, "ModelSource needs a config or a pretrained_uri"
        return LlamaForCausalLM(LlamaConfig(**self.config))


def flops_per_token(config: Any, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), the PaLM appendix-B estimate used for MFU:
    6 × (matmul parameters, the output projection included) + 12 × layers × hidden × seq_len for attention."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    per_layer = hidden * (hidden + 2 * kv) + hidden * hidden + 3 * hidden * config.intermediate_size
    matmul_params = layers * per_layer + config.vocab_size * hidden
    return 6.0 * matmul_params + 12.0 * layers * hidden * seq_len

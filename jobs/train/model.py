"""The model a training run starts from: a fresh Llama (or Qwen3-MoE) from spec dimensions, or a Hugging Face
directory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.train.sources import TokenizerInfo
from pipelines import storage
from pipelines.spec.post import LoraConfig
from pipelines.spec.train import ModelConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Embedding rows are padded to a multiple of this so the output projection's matmul tiles evenly on GPUs;
# the extra rows are never produced by the tokenizer.
VOCAB_MULTIPLE = 64


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def model_config(model: ModelConfig, tokenizer: TokenizerInfo, seq_len: int) -> dict[str, Any]:
    """`transformers.AutoConfig.for_model` keyword arguments (model_type first) for a model sized by the spec and
    the tokenizer: a Llama, or with `moe` a Qwen3-MoE (the same block with expert MLPs)."""
    dims = model.dims()
    config = {
        "model_type": "llama",
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
    moe = model.moe_dims()
    if moe is not None:
        config.update(
            model_type="qwen3_moe",
            head_dim=dims["hidden_size"] // dims["num_heads"],
            num_experts=moe["num_experts"],
            num_experts_per_tok=moe["experts_per_token"],
            moe_intermediate_size=moe["expert_intermediate_size"],
            decoder_sparse_step=moe["every_n_layers"],
            norm_topk_prob=True,  # the k routing weights sum to 1, as in Qwen3-MoE's released models
            router_aux_loss_coef=moe["router_aux_loss_coef"],
            output_router_logits=False,  # the training loop adds the aux loss itself, for every objective
        )
    return config


HEADS = ("causal_lm", "reward")


@dataclass(frozen=True)
class ModelSource:
    """How a worker gets its starting weights and what the stage exports.

    `config` builds a fresh model (pretraining: `model_config`); `pretrained_uri` loads a Hugging Face directory
    (SFT, reward model, DPO). `head` picks the output layer: "causal_lm" (next-token logits) or "reward" (one scalar per
    sequence, read at its last non-pad token: LlamaForSequenceClassification with num_labels=1). `lora` wraps
    the model in LoRA adapters that export merges back into the weights."""

    config: dict[str, Any] | None = None
    pretrained_uri: str | None = None
    head: str = "causal_lm"
    lora: LoraConfig | None = None
    pad_token_id: int | None = None  # set on the model config when the source has none (the reward head needs it)
    stop_token_ids: tuple[int, ...] = ()  # end-of-turn tokens generation also stops at (written to the export)

    def build(self, seed: int) -> PreTrainedModel:
        """The model in fp32 on the CPU; every rank builds the same weights from the same seed."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        assert self.head in HEADS, f"unknown head {self.head!r}"
        torch.manual_seed(seed)
        if self.pretrained_uri is not None:
            with storage.local_copy(self.pretrained_uri) as path:
                model = self.auto_class().from_pretrained(path, dtype=torch.float32, **self.head_kwargs())
        else:
            assert self.config is not None, "ModelSource needs a config or a pretrained_uri"
            kwargs = dict(self.config)
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs))
        if model.config.pad_token_id is None and self.pad_token_id is not None:
            model.config.pad_token_id = self.pad_token_id
        return self.adapt(model)

    def auto_class(self) -> Any:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        return AutoModelForSequenceClassification if self.head == "reward" else AutoModelForCausalLM

    def head_kwargs(self) -> dict[str, Any]:
        return {"num_labels": 1} if self.head == "reward" else {}

    def adapt(self, model: Any) -> Any:
        """`model` wrapped in LoRA adapters when configured (only the adapters train)."""
        if self.lora is None:
            return model
        from jobs.train import lora

        return lora.wrap(model, self.lora)

    def exportable(self, config: Any, state: dict[str, Any]) -> PreTrainedModel:
        """A plain transformers model of the trained class holding `state` (gathered from the engine's module):
        LoRA adapters merged, the KV cache on, and the chat template's end-of-turn tokens as stop tokens. With
        `lora.merge` off, the peft model itself, whose save_pretrained writes only the adapter."""
        import copy

        import torch

        config = copy.deepcopy(config)
        config.use_cache = True  # training turns the KV cache off; generation wants it
        model = self.adapt(self.auto_class().from_config(config, dtype=torch.float32))
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {k for k in missing if k.endswith("lm_head.weight")} if config.tie_word_embeddings else set()
        if unexpected or set(missing) - tied:
            raise RuntimeError(f"export: state dict does not match the model: {missing=}, {unexpected=}")
        if self.lora is not None and not self.lora.merge:
            # The adapter alone (peft writes adapter_config.json and adapter_model.safetensors), naming the base it
            # was trained on, so a serve stage can put it on that base with vLLM's LoRA support.
            model.peft_config["default"].base_model_name_or_path = self.pretrained_uri
            return model
        if self.lora is not None:
            model = model.merge_and_unload()
        model.tie_weights()
        if self.stop_token_ids and self.head == "causal_lm":
            eos = model.generation_config.eos_token_id
            eos = [eos] if isinstance(eos, int) else list(eos or [])
            model.generation_config.eos_token_id = eos + [t for t in self.stop_token_ids if t not in eos]
        return model


def flops_per_token(config: Any, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), the PaLM appendix-B estimate used for MFU:
    6 × (matmul parameters a token runs through, the output projection included) + 12 × layers × hidden × seq_len
    for attention. In an MoE layer a token runs the router and its experts_per_token experts (active parameters)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    attention = hidden * (hidden + 2 * kv) + hidden * hidden
    dense_mlp = 3 * hidden * config.intermediate_size
    moe = moe_layers(config)
    moe_mlp = 0
    if moe:
        moe_mlp = 3 * hidden * config.moe_intermediate_size * config.num_experts_per_tok + hidden * config.num_experts
    matmul_params = layers * attention + (layers - len(moe)) * dense_mlp + len(moe) * moe_mlp
    return 6.0 * (matmul_params + config.vocab_size * hidden) + 12.0 * layers * hidden * seq_len


def moe_layers(config: Any) -> list[int]:
    """The decoder layers with experts (transformers' Qwen3-MoE rule); [] for a dense model."""
    from jobs.train.moe import is_moe

    if not is_moe(config):
        return []
    step, dense = config.decoder_sparse_step, set(getattr(config, "mlp_only_layers", None) or [])
    return [i for i in range(config.num_hidden_layers) if i not in dense and (i + 1) % step == 0]

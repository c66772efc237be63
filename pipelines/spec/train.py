"""Training stage specs: the tokenizer and pretraining stages and the configs later training stages reuse.

`ModelConfig`, `DeepSpeedConfig`, `OptimConfig`, `ScheduleConfig` and `FailureConfig` are shared by every stage
that runs the training core in `jobs/train` (pretrain here; SFT, reward model and DPO in `post.py`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from pipelines.spec.base import Model, Scaling, StageBase

# Llama-architecture sizes. `tiny` trains in seconds on a CPU; the others follow published models of that size
# (125m/350m like GPT-3 small/medium with Llama blocks, 1b like Llama-3.2-1B). Vocabulary comes from the tokenizer.
# Head dims are >= 32, the smallest vLLM's CPU attention kernels accept, so every preset also serves on CPU.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2, "intermediate_size": 176},
    "125m": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "num_kv_heads": 12, "intermediate_size": 2048},
    "350m": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "num_kv_heads": 16, "intermediate_size": 2816},
    "1b": {
        "hidden_size": 2048, "num_layers": 16, "num_heads": 32, "num_kv_heads": 8, "intermediate_size": 8192,
        "rope_theta": 500_000.0,
    },
}  # fmt: skip
# Mixture-of-experts variants: the dense preset's attention with 8 experts, 2 active per token, each about half the
# dense MLP's width, so a token runs about as many MLP parameters as in the dense preset (tiny: 2 x 96 against 176,
# as expert widths are multiples of EXPERT_WIDTH_MULTIPLE; 125m: 2 x 1024, exactly its 2048).
MOE_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-moe": ("tiny", {"num_experts": 8, "experts_per_token": 2}),
    "125m-moe": ("125m", {"num_experts": 8, "experts_per_token": 2}),
}
# vLLM's CPU expert kernels pad each expert's width to a multiple of 32, and an RLHF weight sync into a padded
# engine fails, so expert widths are multiples of 32 (as GPU kernels prefer anyway).
EXPERT_WIDTH_MULTIPLE = 32
PRESET_NAMES = ("tiny", "125m", "350m", "1b", "tiny-moe", "125m-moe")
DIM_FIELDS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


class TokenizerStage(StageBase):
    """Train a byte-level BPE tokenizer on a sample of curated text, or adopt an existing tokenizer.

    Output: Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json with `chat_template`,
    special_tokens_map.json) at the stage's output root.
    """

    reference_fields = ("data", "pretrained")

    kind: Literal["tokenizer"] = Field(description="Stage kind: train or adopt a tokenizer.")
    runner: ClassVar[str] = "jobs.tokenizer:run"
    data: str | None = Field(
        None,
        description="The data stage to train on, or a directory (local or s3://) of Parquet files with a text "
        "column (its `data/` subdirectory is used when present). Leave empty when `pretrained` is set.",
    )
    pretrained: str | None = Field(
        None,
        description="An existing Hugging Face tokenizer directory (local or s3://) or an earlier tokenizer stage to "
        "adopt instead of training; a chat template and pad token are added when it has none.",
    )
    vocab_size: int = Field(
        8192, ge=300, le=1_000_000, description="Target vocabulary size including the 256 byte tokens and specials."
    )
    min_frequency: int = Field(2, ge=1, description="A pair must occur this often in the sample to be merged.")
    sample_docs: int = Field(
        200_000,
        ge=1,
        description="Documents sampled from the data (files in a seeded random order) to train on; more gives "
        "slightly better merges at the cost of tokenizer training time.",
    )
    seed: int = Field(0, description="Seed of the file order the sample is drawn in.")
    text_column: str = Field("text", min_length=1, description="Parquet column holding the document text.")
    eos_token: str = Field(
        "<|endoftext|>", min_length=1, description="End-of-document token; also BOS and the separator when packing."
    )
    pad_token: str = Field("<|pad|>", min_length=1, description="Padding token (never trained on).")
    extra_special_tokens: list[str] = Field(
        default_factory=list, description="More special tokens to reserve, e.g. tool-call markers."
    )
    chat_template: str = Field(
        "chatml",
        min_length=1,
        description="'chatml' (adds <|im_start|>/<|im_end|> as special tokens) or a Jinja chat template string "
        "(its special tokens go in extra_special_tokens).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> TokenizerStage:
        if (self.data is None) == (self.pretrained is None):
            raise ValueError(
                f"set exactly one of `data` (train a new tokenizer) or `pretrained` (adopt an existing one); "
                f"got data={self.data!r}, pretrained={self.pretrained!r}"
            )
        floor = 256 + len(self.special_tokens())
        if self.data is not None and self.vocab_size <= floor:
            raise ValueError(
                f"vocab_size ({self.vocab_size}) must exceed the 256 byte tokens plus {floor - 256} special tokens "
                f"to leave room for merges; use at least {floor + 1} (typically 8192-65536)"
            )
        return self

    def special_tokens(self) -> list[str]:
        """All special tokens in id order: EOS first (id 0), pad, chat markers, then the extra ones."""
        chat = list(CHATML_TOKENS) if self.chat_template == "chatml" else []
        tokens: list[str] = []
        for token in [self.eos_token, self.pad_token, *chat, *self.extra_special_tokens]:
            if token not in tokens:
                tokens.append(token)
        return tokens

    def template(self) -> str:
        return CHATML_TEMPLATE if self.chat_template == "chatml" else self.chat_template


class MoeConfig(Model):
    """Mixture-of-experts feed-forward layers, in the Qwen3-MoE architecture (`Qwen3MoeForCausalLM`).

    Qwen3-MoE is a Llama block (RMSNorm, RoPE, grouped-query attention, SwiGLU) whose MLP is a softmax top-k router
    over SwiGLU experts, so a dense model and its MoE variant differ only in the feed-forward layers; vLLM serves
    it (also on CPU), transformers loads it unchanged, and its `decoder_sparse_step` gives MoE every n-th layer.
    Mixtral routes every layer and Qwen2-MoE puts a bias on q/k/v, so neither is the dense model plus experts.
    Routing is dropless: every token reaches its top-k experts (no capacity factor), so no token is dropped.
    """

    num_experts: int = Field(8, ge=2, description="Experts per MoE layer (at least 2: one expert is a dense MLP).")
    experts_per_token: int = Field(2, ge=1, description="Experts each token is routed to (top-k); at most num_experts.")
    expert_intermediate_size: int | None = Field(
        None,
        gt=0,
        multiple_of=EXPERT_WIDTH_MULTIPLE,
        description="Each expert's MLP width, a multiple of 32; default: the dense intermediate_size / "
        "experts_per_token rounded up to a multiple of 32, so a token runs about as many MLP parameters as the "
        "dense model (equal active parameters).",
    )
    shared_experts: Literal[0] = Field(
        0,
        description="Experts every token also goes through. Qwen3-MoE has none, so only 0 is accepted; the "
        "architectures with a shared expert (Qwen2-MoE, DeepSeek) change the attention block as well.",
    )
    router_aux_loss_coef: float = Field(
        0.05,
        ge=0,
        description="Weight of the routers' load-balancing loss (Switch Transformer's, per layer) added to the "
        "training objective; 0 turns it off. It is logged as aux_loss. bench/moe.py on real text: 0.01 left each "
        "layer's expert load uneven (coefficient of variation 0.47), 0.05 evened it (0.16) and lowered the loss.",
    )
    every_n_layers: int = Field(
        1, ge=1, description="Make every n-th decoder layer MoE (the others keep the dense MLP); 1: every layer."
    )

    @model_validator(mode="after")
    def _top_k(self) -> MoeConfig:
        if self.experts_per_token > self.num_experts:
            raise ValueError(
                f"moe.experts_per_token ({self.experts_per_token}) is more than moe.num_experts "
                f"({self.num_experts}); a token cannot go to more experts than a layer has: lower experts_per_token "
                f"or raise num_experts"
            )
        return self


class ModelConfig(Model):
    """A Llama-architecture model (or its mixture-of-experts variant): a preset, optionally with some dimensions
    overridden, or all dimensions."""

    preset: Literal["tiny", "125m", "350m", "1b", "tiny-moe", "125m-moe"] | None = Field(
        "tiny",
        description="Size preset: tiny (CPU tests), 125m, 350m, 1b, or the mixture-of-experts tiny-moe and "
        "125m-moe (8 experts, top-2, the dense preset's active parameters). Null requires every dimension below.",
    )
    hidden_size: int | None = Field(None, gt=0, description="Model width; overrides the preset.")
    num_layers: int | None = Field(None, gt=0, description="Decoder layers; overrides the preset.")
    num_heads: int | None = Field(
        None,
        gt=0,
        description="Attention heads; must divide hidden_size. Keep hidden_size / num_heads >= 32 to serve the "
        "model with vLLM on CPU (its smallest supported head size).",
    )
    num_kv_heads: int | None = Field(
        None, gt=0, description="Key/value heads (grouped-query attention); must divide num_heads."
    )
    intermediate_size: int | None = Field(None, gt=0, description="MLP width; overrides the preset.")
    rope_theta: float | None = Field(
        None, gt=0, description="RoPE base frequency; default 10000 unless the preset sets it."
    )
    max_position_embeddings: int | None = Field(
        None, gt=0, description="Longest context the exported model accepts; defaults to schedule.seq_len."
    )
    tie_embeddings: bool = Field(True, description="Share the input embedding and output projection weights.")
    init_std: float = Field(0.02, gt=0, description="Standard deviation of the normal weight initialisation.")
    moe: MoeConfig | None = Field(
        None,
        description="Mixture-of-experts feed-forward layers (Qwen3-MoE) on any preset; the fields given override "
        "an MoE preset's. Null: the preset's (dense for tiny, 125m, 350m, 1b).",
    )

    @model_validator(mode="before")
    @classmethod
    def _moe_over_preset(cls, data: Any) -> Any:
        """An MoE preset's settings under the fields the spec gives (`moe: {num_experts: 4}` on tiny-moe)."""
        if isinstance(data, dict) and data.get("preset") in MOE_PRESETS:
            given = data.get("moe")
            if given is not None and not isinstance(given, dict):
                return data  # pydantic reports the type
            data = {**data, "moe": {**MOE_PRESETS[data["preset"]][1], **(given or {})}}
        return data

    @model_validator(mode="after")
    def _dims_complete(self) -> ModelConfig:
        missing = [f for f in DIM_FIELDS if getattr(self, f) is None]
        if self.preset is None and missing:
            raise ValueError(
                f"model.preset is null, so every dimension must be given; missing: {', '.join(missing)}. "
                f"Set model.preset ({', '.join(PRESET_NAMES)}) or give the missing fields."
            )
        dims = self.dims()
        if self.moe is not None and self.moe.every_n_layers > dims["num_layers"]:
            raise ValueError(
                f"model.moe.every_n_layers ({self.moe.every_n_layers}) is more than model.num_layers "
                f"({dims['num_layers']}), so no layer would have experts; lower every_n_layers"
            )
        if dims["hidden_size"] % dims["num_heads"]:
            raise ValueError(
                f"model.num_heads ({dims['num_heads']}) must divide model.hidden_size ({dims['hidden_size']}); "
                f"pick a head count such as {_divisor_near(dims['hidden_size'], dims['num_heads'])}"
            )
        if dims["num_heads"] % dims["num_kv_heads"]:
            raise ValueError(
                f"model.num_kv_heads ({dims['num_kv_heads']}) must divide model.num_heads ({dims['num_heads']}); "
                f"use e.g. {_divisor_near(dims['num_heads'], dims['num_kv_heads'])}"
            )
        return self

    def dims(self) -> dict[str, Any]:
        """The resolved dimensions: the preset's values with the explicit fields on top."""
        dims: dict[str, Any] = {"rope_theta": 10_000.0}
        dense = MOE_PRESETS[self.preset][0] if self.preset in MOE_PRESETS else self.preset
        dims.update(MODEL_PRESETS.get(dense or "", {}))
        for name in (*DIM_FIELDS, "rope_theta"):
            if getattr(self, name) is not None:
                dims[name] = getattr(self, name)
        return dims

    def moe_dims(self) -> dict[str, Any] | None:
        """The resolved MoE settings (expert width filled in), or None for a dense model."""
        if self.moe is None:
            return None
        moe = self.moe.model_dump()
        if moe["expert_intermediate_size"] is None:
            width = -(-self.dims()["intermediate_size"] // moe["experts_per_token"])
            moe["expert_intermediate_size"] = -(-width // EXPERT_WIDTH_MULTIPLE) * EXPERT_WIDTH_MULTIPLE
        return moe


def _divisor_near(n: int, target: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - target))


class DeepSpeedConfig(Model):
    """The DeepSpeed engine: ZeRO sharding, offload and numeric precision."""

    zero_stage: int = Field(
        2,
        ge=0,
        le=3,
        description="ZeRO stage: 0 plain data parallel, 1 shards optimizer state, 2 also gradients, 3 also "
        "parameters (largest models, most communication). A single worker has nothing to shard, so it runs "
        "stage 0 unless offloading is on (ZeRO's bookkeeping would only cost time).",
    )
    offload_optimizer: bool = Field(
        False, description="Keep optimizer state and the update on the CPU (ZeRO-Offload); needs zero_stage >= 1."
    )
    offload_params: bool = Field(
        False, description="Keep parameters on the CPU between uses (ZeRO-Infinity style); needs zero_stage 3."
    )
    activation_checkpointing: bool = Field(
        False,
        description="Keep only each layer's input during the forward pass and recompute the rest in backward "
        "(Hugging Face gradient checkpointing): activation memory falls to about one layer's worth plus one hidden "
        "state per layer, for about a third more compute. `llmctl plan --cluster` shows both figures.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Training precision: auto = bf16 on GPU, fp32 on CPU. fp16 uses dynamic loss scaling. "
        "bf16/fp16 need GPUs.",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw DeepSpeed config keys merged (recursively) over the generated config, for knobs the spec "
        "does not model, e.g. {zero_optimization: {reduce_bucket_size: 50000000}}.",
    )

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> DeepSpeedConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                f"deepspeed.offload_params needs zero_stage 3 (got {self.zero_stage}): only ZeRO-3 partitions "
                f"parameters. Set deepspeed.zero_stage: 3 or deepspeed.offload_params: false."
            )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError(
                "deepspeed.offload_optimizer needs zero_stage >= 1 (got 0): ZeRO-Offload moves the sharded optimizer "
                "state. Set deepspeed.zero_stage: 1, 2 or 3, or deepspeed.offload_optimizer: false."
            )
        return self

    def resolved_stage(self, num_workers: int) -> int:
        """The stage actually run: 0 for a single worker without offload (sharding over one rank is overhead)."""
        if num_workers == 1 and not (self.offload_optimizer or self.offload_params):
            return 0
        return self.zero_stage

    def resolved_precision(self, use_gpu: bool) -> str:
        if self.precision == "auto":
            return "bf16" if use_gpu else "fp32"
        return self.precision


class OptimConfig(Model):
    """AdamW with linear warmup then cosine decay, and gradient clipping."""

    lr: float = Field(3e-4, gt=0, description="Peak learning rate, reached at the end of warmup.")
    min_lr: float = Field(3e-5, ge=0, description="Learning rate at the end of the cosine decay.")
    warmup_steps: int = Field(100, ge=0, description="Optimizer steps of linear warmup from ~0 to lr.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay on matrices (not norms/biases).")
    beta1: float = Field(0.9, gt=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, gt=0, lt=1, description="AdamW beta2; 0.95 is steadier than 0.999 for LM pretraining.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this; 0 disables clipping.")

    @model_validator(mode="after")
    def _min_below_peak(self) -> OptimConfig:
        if self.min_lr > self.lr:
            raise ValueError(
                f"optim.min_lr ({self.min_lr}) is above optim.lr ({self.lr}); the cosine decays from lr down to "
                f"min_lr, so set min_lr <= lr (commonly lr / 10)"
            )
        return self


class ScheduleConfig(Model):
    """How long to train, in what batches, and how often to evaluate, log and checkpoint."""

    steps: int = Field(1000, ge=1, description="Optimizer steps in total (a resumed run continues up to this).")
    seq_len: int = Field(
        512,
        ge=8,
        description="Tokens per training sequence: the packing length in pretraining (and SFT with packing), the "
        "longest example (prompt + answer) in SFT, reward-model and DPO stages.",
    )
    micro_batch_size: int = Field(8, ge=1, description="Sequences per worker per forward/backward pass.")
    grad_accum: int = Field(
        1, ge=1, description="Micro-batches accumulated per optimizer step; global batch = micro × accum × workers."
    )
    eval_every: int = Field(100, ge=1, description="Evaluate on the validation split every this many steps.")
    eval_batches: int = Field(20, ge=1, description="Validation micro-batches per worker per evaluation, at most.")
    checkpoint_every: int = Field(
        200, ge=1, description="Save a resumable checkpoint every this many steps (and always at the end)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept in storage.")
    log_every: int = Field(10, ge=1, description="Report metrics (Ray Train, TensorBoard, job log) every N steps.")
    time_budget_s: float | None = Field(
        None,
        gt=0,
        description="Stop training after this many seconds of the training loop even if `steps` is not reached "
        "(then evaluate, checkpoint and export as usual). Null trains for `steps`.",
    )
    seed: int = Field(0, description="Seed for weight initialisation.")


class FailureConfig(Model):
    """What Ray Train does when a worker dies."""

    max_failures: int = Field(
        3,
        ge=-1,
        description="Worker-group restarts from the last checkpoint before the stage fails; -1 retries forever, "
        "0 fails on the first lost worker.",
    )


class PretrainStage(StageBase):
    """Pretrain a Llama-architecture model from scratch with Ray Train + DeepSpeed (causal language modelling).

    Output: `model/` (Hugging Face directory with tokenizer files), `tensorboard/`, and `_state/` (Ray Train
    checkpoints a resubmitted run resumes from).
    """

    reference_fields = ("data", "tokenizer")

    kind: Literal["pretrain"] = Field(description="Stage kind: causal-LM pretraining from scratch.")
    runner: ClassVar[str] = "jobs.train.pretrain:run"
    data: str = Field(
        description="The data stage to train on, or a directory (local or s3://) of Parquet files with a text "
        "column (its `data/` subdirectory is used when present)."
    )
    tokenizer: str = Field(description="The tokenizer stage, or a Hugging Face tokenizer directory (local or s3://).")
    text_column: str = Field("text", min_length=1, description="Parquet column holding the document text.")
    val_fraction: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="Fraction of documents (chosen by a hash of their text, so stable across runs) held out for "
        "the validation loss.",
    )
    materialize: bool = Field(
        False,
        description="Tokenize and pack the data once, before training, and keep it in Ray's object store (spilled "
        "to disk when large) instead of streaming it from Parquet again every epoch. Worth it for small corpora "
        "trained for many epochs; leave off for corpora trained on about once.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model architecture and size.")
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig, description="DeepSpeed engine settings.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer and learning-rate schedule.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="Steps, batches and cadences.")
    scaling: Scaling = Field(default_factory=Scaling, description="Ray Train workers and their resources.")
    failure: FailureConfig = Field(default_factory=FailureConfig, description="Recovery from lost workers.")

    @model_validator(mode="after")
    def _cross_checks(self) -> PretrainStage:
        _check_precision(self.deepspeed, self.scaling)
        _check_schedule(self.optim, self.schedule, self.model)
        return self


def _check_precision(ds: DeepSpeedConfig, scaling: Scaling) -> None:
    if ds.precision in ("bf16", "fp16") and not scaling.use_gpu:
        raise ValueError(
            f"deepspeed.precision '{ds.precision}' needs GPUs but scaling.use_gpu is false; CPU training runs in "
            f"fp32. Set deepspeed.precision: auto (or fp32), or scaling.use_gpu: true."
        )
    if scaling.use_gpu and scaling.gpus_per_worker <= 0:
        raise ValueError(
            "scaling.use_gpu is true but scaling.gpus_per_worker is 0; give each worker a GPU share (e.g. 1) "
            "or set use_gpu: false"
        )


def _check_warmup(optim: OptimConfig, schedule: ScheduleConfig) -> None:
    if optim.warmup_steps >= schedule.steps:
        raise ValueError(
            f"optim.warmup_steps ({optim.warmup_steps}) must be below schedule.steps ({schedule.steps}), or the "
            f"learning rate never decays; lower warmup_steps (commonly 1-5% of steps)"
        )


def _check_schedule(optim: OptimConfig, schedule: ScheduleConfig, model: ModelConfig) -> None:
    _check_warmup(optim, schedule)
    if model.max_position_embeddings is not None and model.max_position_embeddings < schedule.seq_len:
        raise ValueError(
            f"model.max_position_embeddings ({model.max_position_embeddings}) is shorter than schedule.seq_len "
            f"({schedule.seq_len}); raise it or leave it unset to use seq_len"
        )

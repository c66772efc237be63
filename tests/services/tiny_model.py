"""A tiny random-init Llama with a byte-level BPE tokenizer and a chat template, built offline.

The answers are gibberish; the serving tests check protocol behaviour, not quality. bench/serve.py builds the
same model (a little larger) so the benchmark needs no download either.
"""

from __future__ import annotations

import os
import random

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

_WORDS = (
    "the a model serves tokens quickly ray cluster replica engine answers every request with text "
    "small cat dog runs jumps over lazy fox bright morning data pipeline trains aligns scales down up"
).split()


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) + "." for _ in range(count)]


def build_tokenizer(out_dir: str, vocab_size: int = 512) -> int:
    """Train and save the tokenizer; return its real vocabulary size (the corpus may give fewer merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(sentences(400), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return len(fast)


def build_tiny_llama(out_dir: str, hidden: int = 64, layers: int = 2, vocab_size: int = 512) -> str:
    """Write an HF model directory (config, safetensors, tokenizer with chat template) and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    # The model's vocabulary is the tokenizer's real size, so no sampled id is missing from the tokenizer.
    vocab = build_tokenizer(out_dir, vocab_size)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        # vLLM's CPU attention kernels support head sizes from 32 up, so heads are 32 wide.
        num_attention_heads=max(1, hidden // 32),
        num_key_value_heads=max(1, hidden // 32),
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(out_dir, safe_serialization=True)
    return out_dir

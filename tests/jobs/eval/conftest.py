"""Models for eval tests: the tiny random chat Llama of the training tests, and a copy of it whose every weight is
zero, so its next-token distribution is uniform over the vocabulary and its loss is known by hand (ln V)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def uniform_model_dir(base_model_dir, tmp_path_factory) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    from jobs.train.export import copy_tokenizer

    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    out = str(tmp_path_factory.mktemp("uniform-model"))
    model.save_pretrained(out)
    copy_tokenizer(base_model_dir, out)
    return out

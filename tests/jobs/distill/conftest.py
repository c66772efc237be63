"""The training tests' tiny inputs (a random tiny Llama with a ChatML tokenizer, the demo chat data), plus a larger
teacher that shares the student's tokenizer."""

from __future__ import annotations

from collections.abc import Iterable

import pytest


@pytest.fixture(scope="session")
def teacher_dir(base_model_dir, chat_dir, tmp_path_factory) -> str:
    """Twice the student's width and layers, same tokenizer, briefly trained on the demo chat answers (plain torch,
    a few seconds): confident where the data is predictable, unlike the random student."""
    import torch

    from jobs.train.export import copy_tokenizer
    from jobs.train.model import ModelSource, model_config
    from jobs.train.sources import tokenizer_info
    from pipelines.spec.train import ModelConfig

    size = ModelConfig(preset="tiny", hidden_size=128, num_layers=4, intermediate_size=352)
    model = ModelSource(config=model_config(size, tokenizer_info(base_model_dir, "teacher"), seq_len=128)).build(1)
    ids, labels, _ = chat_rows(base_model_dir, open(f"{chat_dir}/sft.jsonl"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(TEACHER_STEPS):
        batch = slice(step * 16 % (len(ids) - 16), step * 16 % (len(ids) - 16) + 16)
        loss = model(input_ids=ids[batch], labels=labels[batch]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = str(tmp_path_factory.mktemp("teacher"))
    model.save_pretrained(out)
    copy_tokenizer(base_model_dir, out)
    return out


TEACHER_STEPS = 60


def chat_rows(model_dir: str, lines: Iterable[str]) -> tuple:
    """(ids, labels, lengths) tensors, (N, 128) twice and (N,), of the usable conversations among JSON lines,
    encoded as the stages encode them."""
    import torch

    from jobs.train.chat_data import Drop, Encoder, parse_json, to_conversation
    from jobs.train.chat_datasets import pad_rows
    from tests.jobs.train.test_post_data import settings_for

    encoder = Encoder(settings_for(model_dir))
    ids, labels = [], []
    for line in lines:
        try:
            row_ids, row_labels, _ = encoder.conversation(to_conversation(parse_json(line)))
        except Drop:
            continue  # the demo data plants bad rows
        ids.append(row_ids)
        labels.append(row_labels)
    pad = encoder.settings.pad_id
    lengths = torch.tensor([len(r) for r in ids])
    return torch.as_tensor(pad_rows(ids, 128, pad)).long(), torch.as_tensor(pad_rows(labels, 128, -100)).long(), lengths

"""The tiny chat policy and the chat data of the post-training tests (one definition, shared)."""

from tests.jobs.train.conftest import base_model_dir, chat_dir, chat_tokenizer_dir, moe_model_dir  # noqa: F401

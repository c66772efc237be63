"""The tiny chat policy and the chat data of the post-training tests (one definition, shared)."""

from tests.jobs.train.conftest import base_model_dir, chat_dir  # noqa: F401

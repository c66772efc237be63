from tests.jobs.train.conftest import base_model_dir, chat_dir, chat_tokenizer_dir  # noqa: F401 (fixtures shared with training tests)

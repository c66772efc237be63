"""Rule rewards for `reward_function`, and the loader that turns 'module:function' into a scorer.

A reward function has TRL's signature: f(prompts, completions, **kwargs) -> list[float], one score per
completion; `prompts` are the user turns the completions answer, `completions` the decoded answers (special
tokens removed). Extra keyword arguments come from the stage's `reward_kwargs`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

from pipelines.errors import StageError


def contains_word(prompts: list[str], completions: list[str], word: str = "Marlow", **_: Any) -> list[float]:
    """1.0 when the completion contains `word` (case-insensitive), else 0.0."""
    return [float(word.lower() in c.lower()) for c in completions]


def target_length(
    prompts: list[str], completions: list[str], words: int = 5, per_word: float = 0.2, **_: Any
) -> list[float]:
    """1.0 at exactly `words` words, falling off by `per_word` per word away from it (never below 0)."""
    return [max(0.0, 1.0 - per_word * abs(len(c.split()) - words)) for c in completions]


def load(path: str, field: str) -> Callable[..., list[float]]:
    module_name, _, name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StageError(
            f"{field}: cannot import module '{module_name}' ({exc}); the module must be importable where the job "
            "runs (inside this repository's packages, or installed in the cluster's image)."
        ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise StageError(f"{field}: module '{module_name}' has no function '{name}'")
    return fn


class FunctionReward:
    """Scores a batch with a Python reward function, in the driver (rules are cheap next to a model)."""

    def __init__(self, path: str, kwargs: dict[str, Any], field: str) -> None:
        self.fn, self.kwargs, self.path = load(path, field), dict(kwargs), path

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        scores = list(self.fn(prompts, completions, **self.kwargs))
        if len(scores) != len(completions) or not all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
            raise StageError(
                f"reward_function {self.path} must return one finite number per completion; got "
                f"{len(scores)} values for {len(completions)} completions: {scores[:4]}..."
            )
        return [float(s) for s in scores]

"""A stage's runner, imported only when a stage of that kind runs: its spec class names it (`StageBase.runner`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pipelines.errors import SpecError


def load_runner(path: str) -> Callable[[Any], dict]:
    """The function "module:function" names; a clear error when either is missing."""
    module_name, _, func = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise SpecError(f"stage runner '{path}': cannot import module '{module_name}' ({exc})") from None
    if not func or not callable(getattr(module, func, None)):
        raise SpecError(f"stage runner '{path}': module '{module_name}' has no function '{func or '?'}'")
    return getattr(module, func)

"""Every error a user can cause is one of these. The CLI prints them without a traceback (exit 2)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LlmctlError(Exception):
    """Base of user-facing errors: the message says the rule, the values and the fix."""

    exit_code = 2


class SpecError(LlmctlError):
    """The pipeline file or an override is invalid."""


class ClusterError(LlmctlError):
    """The Ray cluster cannot be reached or refused a request."""


class StorageError(LlmctlError):
    """A path or bucket cannot be read or written."""


class StageError(LlmctlError):
    """A stage was given input it cannot use."""


class JobFailed(LlmctlError):
    """The submitted Ray job ended in failure."""

    exit_code = 1


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """' — did you mean 'x'?' for the closest option, or the list of valid options when nothing is close."""
    options = sorted(options)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f" — did you mean '{close[0]}'?"
    return f" — valid: {', '.join(options)}" if options else ""


class CapacityError(LlmctlError):
    """The plan cannot fit the cluster it is meant for (memory per GPU, GPU counts, node shapes)."""

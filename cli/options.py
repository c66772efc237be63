"""Options several commands share, declared once."""

from __future__ import annotations

import click

ADDRESS_HELP = (
    "The cluster: its Ray dashboard URL (http://head:8265); default: $RAY_ADDRESS, else the local head. "
    "`llmctl serve` also takes a GCS address (head:6379)."
)


def address_option(f=None, *, envvar: bool = True, help: str = ADDRESS_HELP):
    """--address; with envvar=False, $RAY_ADDRESS does not count (commands that work offline unless asked)."""

    def decorate(fn):
        return click.option("--address", envvar="RAY_ADDRESS" if envvar else None, default=None, help=help)(fn)

    return decorate(f) if f is not None else decorate


def cluster_option(f):
    return click.option(
        "--cluster", "cluster_shape", metavar="NODESxGPUSxDEVICE", default=None,
        help="Plan for this cluster shape, e.g. 2x8xH100-80GB or 8xA100-80GB: per-stage memory and time estimates, "
        "and a check that every stage fits.",
    )(f)  # fmt: skip

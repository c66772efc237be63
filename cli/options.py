"""Options several commands share, declared once."""

from __future__ import annotations

import click

ADDRESS_HELP = (
    "The cluster: its Ray dashboard URL (http://head:8265); default: $RAY_ADDRESS, else the local head. "
    "`llmctl serve` also takes a GCS address (head:6379)."
)


def address_option(f):
    return click.option("--address", envvar="RAY_ADDRESS", default=None, help=ADDRESS_HELP)(f)

"""Options several commands share, declared once."""

from __future__ import annotations

import click

ADDRESS_HELP = (
    "The cluster: its Ray dashboard URL (http://head:8265); default: $RAY_ADDRESS, else the local head. "
    "`llmctl serve` also takes a GCS address (head:6379)."
)


PLAN_ADDRESS_HELP = (
    "Plan for the cluster at this Ray dashboard URL: its nodes, GPUs and GPU types as Ray reports them "
    "($RAY_ADDRESS is not read: planning stays offline unless asked)."
)


def address_option(f):
    return click.option("--address", envvar="RAY_ADDRESS", default=None, help=ADDRESS_HELP)(f)


def plan_address_option(f):
    return click.option("--address", default=None, help=PLAN_ADDRESS_HELP)(f)


def cluster_option(f):
    return click.option(
        "--cluster", "cluster_shape", metavar="NODESxGPUSxDEVICE", default=None,
        help="Plan for this cluster shape, e.g. 2x8xH100-80GB or 8xA100-80GB: per-stage memory and time estimates, "
        "and a check that every stage fits.",
    )(f)  # fmt: skip

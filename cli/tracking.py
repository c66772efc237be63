"""`llmctl tracking up|down|status`: a local MLflow tracking server for pipelines' `tracking.mlflow`."""

from __future__ import annotations

import os
import sys

import click

tracking = click.Group("tracking", help="A local MLflow tracking server (loopback only) that pipelines log to.")


def server_options(f):
    help_storage = "The pipelines' `storage:`; the server keeps its database and artifacts in <PATH>/mlflow."
    f = click.option("--storage", "storage_root", default="./runs", show_default=True, metavar="PATH",
                     help=help_storage)(f)  # fmt: skip
    return click.option("--port", type=int, default=5000, show_default=True, help="Port on 127.0.0.1.")(f)


def _server(storage_root: str, port: int):
    from cluster.tracking import Server

    return Server(root=os.path.join(storage_root, "mlflow"), port=port)


@tracking.command()
@server_options
def up(storage_root: str, port: int) -> None:
    """Start the server unless it answers; prints the tracking_uri to put in a pipeline."""
    from cluster import tracking as server

    s = server.up(_server(storage_root, port))
    click.echo(f"MLflow tracking server up: {s.uri} (runs in {s.root}/mlflow.db, artifacts in {s.root}/artifacts)")
    click.echo(f"pipelines log to it with:  tracking: {{mlflow: {{tracking_uri: {s.uri}}}}}")


@tracking.command()
@server_options
def down(storage_root: str, port: int) -> None:
    """Stop the server `up` started (its runs and artifacts stay)."""
    from cluster import tracking as server

    stopped = server.down(_server(storage_root, port))
    click.echo("MLflow tracking server stopped" if stopped else "MLflow tracking server was not running")


@tracking.command()
@server_options
def status(storage_root: str, port: int) -> None:
    """Whether the server answers."""
    from cluster import tracking as server

    s = _server(storage_root, port)
    if not server.healthy(s.uri):
        click.echo(f"MLflow tracking server: down at {s.uri} (start it with `llmctl tracking up`)")
        sys.exit(1)
    click.echo(f"MLflow tracking server: up at {s.uri}")

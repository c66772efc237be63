"""`llmctl serve status|scale|down NAME`: the Serve applications pipelines deployed. Logic lives in services/."""

from __future__ import annotations

import json
from typing import Any

import click

from cli.options import address_option


def format_status(info: dict[str, Any]) -> str:
    lines = [f"{info['name']}  {info['status']}  {info['endpoint']}"]
    if info.get("message"):
        lines.append(f"  {info['message']}")
    for name, d in info["deployments"].items():
        replicas = " ".join(f"{state}={n}" for state, n in sorted(d["replicas"].items())) or "none"
        line = f"  {name:<24} {d['status']:<12} replicas {replicas}"
        auto = d.get("autoscaling") or {}
        if name == info.get("model_deployment") and auto.get("max_replicas") is not None:
            line += (
                f"  (autoscaling {auto['min_replicas']}..{auto['max_replicas']}, "
                f"target {auto['target_ongoing_requests']} ongoing/replica)"
            )
        lines.append(line)
    return "\n".join(lines)


serve = click.Group("serve", help="Inspect, rescale or remove a Serve application deployed by a pipeline.")


@serve.command()
@click.argument("name", required=False)
@address_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(name: str | None, address: str | None, as_json: bool) -> None:
    """Application state, endpoint, and replicas per deployment; without NAME, every application on the cluster
    (and the model gateway, which answers every model at one base URL)."""
    from services import lifecycle

    info: Any = lifecycle.status(name, address) if name else lifecycle.status_all(address)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    elif name:
        click.echo(format_status(info))
    else:
        click.echo("\n".join(format_status(app) for app in info) or "No Serve applications on this cluster.")


@serve.command()
@click.argument("name")
@address_option
@click.option("--replicas", type=click.IntRange(min=0), help="Fix the replica count (sets min and max).")
@click.option("--min", "min_replicas", type=click.IntRange(min=0), help="New autoscaling minimum.")
@click.option("--max", "max_replicas", type=click.IntRange(min=1), help="New autoscaling maximum.")
@click.option("--target", "target_ongoing_requests", type=click.FloatRange(min=0, min_open=True),
              help="New target of in-flight requests per replica.")  # fmt: skip
def scale(name: str, address: str | None, **changes: Any) -> None:
    """Change autoscaling bounds in place; running replicas are not restarted."""
    from services import lifecycle

    info = lifecycle.scale(name, address, **changes)
    click.echo(format_status(info))


@serve.command()
@click.argument("name")
@address_option
def down(name: str, address: str | None) -> None:
    """Delete the application (its replicas stop; the model files stay)."""
    from services import lifecycle

    lifecycle.down(name, address)
    click.echo(f"Deleted Serve application '{name}'.")

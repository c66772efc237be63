"""`llmctl`: validate, plan, submit and follow pipeline runs on Ray.

Commands import the library lazily so `llmctl --help` stays fast and never imports torch, deepspeed or vllm.
"""

from __future__ import annotations

import json
import sys

import click

from cli.options import address_option, cluster_option, plan_address_option
from pipelines.errors import LlmctlError


class Cli(click.Group):
    """Prints user errors (LlmctlError) as one message without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LlmctlError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)


def set_option(f):
    return click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE",
        help="Override a spec value, e.g. --set pretrain.schedule.steps=200 (repeatable).",
    )(f)  # fmt: skip


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmctl")
def main() -> None:
    """One YAML file takes a language model from raw text to a served endpoint on Ray."""


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@cluster_option
@plan_address_option
def validate(spec: str, overrides: tuple[str, ...], cluster_shape: str | None, address: str | None) -> None:
    """Check a pipeline file: schema, references, inputs; with --cluster (or --address), that every stage fits."""
    from cluster import runs

    p = runs.make_plan(spec, overrides)
    shape = runs.cluster_shape(cluster_shape, address)
    if shape is not None:
        runs.check_fits(p, shape)
    fits = f"; fits {shape.label}" if shape is not None else ""
    names = ", ".join(s.name for s in p.stages)
    click.echo(f"ok: {spec} — pipeline '{p.pipeline}', {len(p.stages)} stages ({names}){fits}")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@cluster_option
@plan_address_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan (and estimates) as one JSON object.")
def plan(spec: str, overrides: tuple[str, ...], cluster_shape: str | None, address: str | None, as_json: bool) -> None:
    """Show the stages, what each reads, its cache key and whether it would be skipped; with --cluster (or
    --address), what each needs per GPU and for how long, and whether it fits."""
    from cli.render import plan_json, print_estimates, print_plan
    from cluster import runs

    p = runs.make_plan(spec, overrides)
    shape = runs.cluster_shape(cluster_shape, address)
    found, problems = runs.estimates(p, shape) if shape is not None else ({}, [])
    cached = runs.cached_stages(p)
    if as_json:
        click.echo(json.dumps(plan_json(p, cached, shape, found, problems)))
        return
    print_plan(p, cached)
    if shape is not None:
        print_estimates(shape, found, problems)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@address_option
@click.option("--no-wait", is_flag=True, help="Return after submitting instead of following the run.")
@click.option("--logs", "stream_logs", is_flag=True, help="Stream the job log instead of the live stage table.")
@click.option("--quiet", is_flag=True, help="Show neither the job log nor the stage table while waiting.")
@click.option(
    "--dry-run", is_flag=True,
    help="Run no stage: reserve each stage's placement groups on the cluster, report where every role lands, release "
    "them. Works on a cluster whose nodes only declare GPUs (python -m cluster.multinode up --worker-gpus 4).",
)  # fmt: skip
def submit(
    spec: str, overrides: tuple[str, ...], address: str | None, no_wait: bool, stream_logs: bool, quiet: bool,
    dry_run: bool,
) -> None:  # fmt: skip
    """Run a pipeline as a Ray job; re-submitting the same spec resumes it.

    While it runs, a terminal shows a live table of the stages; `--logs` (and any non-terminal output, such as
    CI or a pipe) streams the job log as plain lines instead.
    """
    from cli.render import console, follow_live, print_summary
    from cluster import runs

    sub = runs.submit(spec, overrides, address, wait=False, dry_run=dry_run)
    for warning in sub.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    click.echo(f"run {sub.run_id}: job {sub.job_id} submitted")
    click.echo(f"dashboard: {sub.target.dashboard_url}/#/jobs/{sub.job_id}")
    if no_wait:
        click.echo(f"follow it with: llmctl logs -f {sub.run_id}")
        return
    if quiet:
        runs.follow(sub)
    elif stream_logs or not console.is_terminal:
        runs.follow(sub, lambda chunk: click.echo(chunk, nl=False))
    else:
        follow_live(sub)
    print_summary(sub)
    _attach_report(sub)


def _attach_report(sub) -> None:
    """A tracked run's HTML report, as an artifact of its MLflow parent run (written with this shell's
    credentials, like everything the CLI logs)."""
    from cluster import tracking
    from pipelines.spec import Pipeline

    parent = sub.summary.get("tracking", {}).get("mlflow")
    config = Pipeline.model_validate(sub.plan.spec).tracking
    if not parent or config is None or config.mlflow is None:
        return
    from cli.report import write_report

    report = write_report(sub.run_id, sub.plan.storage, address=sub.target.dashboard_url)
    tracking.attach(config.mlflow.tracking_uri, parent, report.path)
    click.echo(f"report: {report.path} (also on MLflow run {parent})")


@main.command()
@click.argument("run_id")
@address_option
def status(run_id: str, address: str | None) -> None:
    """Status of the latest job of a run (or of a job id)."""
    _, job = _latest_job(run_id, address)
    click.echo(f"{job.submission_id}: {job.status}" + (f" — {job.message}" if job.message else ""))


@main.command()
@click.argument("run_id")
@address_option
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the job ends.")
def logs(run_id: str, address: str | None, follow: bool) -> None:
    """Print the log of the latest job of a run."""
    from cluster import jobs

    target, job = _latest_job(run_id, address)
    if follow:
        for chunk in jobs.follow(target, job.submission_id):
            click.echo(chunk, nl=False)
    else:
        click.echo(jobs.logs(target, job.submission_id), nl=False)


@main.command()
@click.argument("run_id")
@address_option
def stop(run_id: str, address: str | None) -> None:
    """Stop the running job of a run; finished stages stay cached."""
    from cluster import jobs

    target, job = _latest_job(run_id, address)
    stopped = jobs.stop(target, job.submission_id)
    click.echo(f"{job.submission_id}: {'stop requested' if stopped else 'already ' + str(job.status)}")


def _latest_job(run_id: str, address: str | None):
    """(target, job): the cluster an existing run is on (never starts the local head) and its latest job."""
    from cluster import jobs

    target = jobs.resolve_target(address, start_local=False)
    return target, jobs.find_job(target, run_id)


@main.command(name="list")
@address_option
def list_runs(address: str | None) -> None:
    """Runs submitted by llmctl to the cluster, newest first."""
    from cli.render import print_runs
    from cluster import jobs

    print_runs(jobs.list_runs(jobs.resolve_target(address, start_local=False)))


@main.command()
@click.argument("run")
@click.option("--storage", "storage_root", default="./runs", show_default=True, metavar="PATH",
              help="Where the pipeline keeps its runs: the `storage:` of its YAML (a path or s3://...).")
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False),
              help="HTML file to write [default: report.html in the run record].")
@address_option
def report(run: str, storage_root: str, out: str | None, address: str | None) -> None:
    """Write one self-contained HTML report of RUN (a run id, or a pipeline name for its latest run)."""
    from cli.report import write_report

    result = write_report(run, storage_root, out, address)
    click.echo(f"report: {result.path}")
    click.echo(result.tensorboard_command or "tensorboard: no stage of this run wrote event files")
    if result.links.dashboard_url:
        click.echo(f"dashboard: {result.links.dashboard_url}")


@main.command()
def schema() -> None:
    """Print the JSON Schema of pipeline files (for editors)."""
    from pipelines.load import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.group()
def cluster() -> None:
    """The embedded local Ray head (the default target)."""


@cluster.command("up")
@click.option("--num-cpus", type=int, default=None, help="Logical CPUs (default: max(8, cores)).")
def cluster_up(num_cpus: int | None) -> None:
    """Start the local head (dashboard on 127.0.0.1:8265) unless it is running."""
    from cluster import local

    head = local.start(local.LocalHead(num_cpus=num_cpus))
    click.echo(f"local Ray head up: dashboard {head.dashboard_url}")


@cluster.command("down")
def cluster_down() -> None:
    """Stop the local head and everything running on it."""
    from cluster import local

    click.echo("local Ray head stopped" if local.stop() else "local Ray head was not running")


@cluster.command("status")
def cluster_status() -> None:
    """Whether the local head runs, and its Ray version."""
    from cluster import local

    head = local.LocalHead()
    version = local.dashboard_version(head.dashboard_url)
    if version is None:
        click.echo("local Ray head: down (start it with `llmctl cluster up`)")
        sys.exit(1)
    click.echo(f"local Ray head: up, Ray {version.get('ray_version')}, dashboard {head.dashboard_url}")


def _add_subgroups() -> None:
    from cli.serve import serve
    from cli.tracking import tracking

    main.add_command(serve)
    main.add_command(tracking)


_add_subgroups()

if __name__ == "__main__":
    main()

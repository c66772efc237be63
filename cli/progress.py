"""Live progress of a run: job log lines -> status events -> a view of the stages -> a rich table.

The driver and the stages already write one line per state change (`[stage] starting|cached|done in|failed`) and
`[stage] progress k=v ...` lines (the data stage's rows, the training loop's step and losses, the serve stage's
replicas). `parse_line` turns such a line into an `Event`; `view` folds a sequence of events into a `RunView`, a
plain model of every stage's state, elapsed time and own progress; `table` renders that model. Both are pure
functions, so a recorded log reproduces exactly what the live display showed. `LiveProgress` is the thin stateful
part: it feeds the job's log chunks through `parse_line` and redraws `table(view(...))` with `rich.live`.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

# `HH:MM:SS [stage] body` from the driver's logger, or `(RayTrainWorker pid=1) [stage] body` from a Ray worker.
LINE = re.compile(r"\[(?P<stage>[A-Za-z0-9_.-]+)\] (?P<body>.*)$")
DONE = re.compile(r"done in (?P<seconds>[0-9.]+)s")
FIELD = re.compile(r"(?P<key>[A-Za-z_][\w/.-]*)=(?P<value>\S+)")
JOB = "*"  # the stage name of job-level events (the job's final status)

PENDING, RUNNING, CACHED, DONE_STATE, FAILED, STOPPED = "pending", "running", "cached", "done", "failed", "stopped"
# What the detail column shows of a stage's latest progress fields, in this order (anything else after these).
SHOWN = ("rows_read", "rows_in", "rows_out", "step", "loss", "eval_loss", "reward", "kl", "replicas", "endpoint")
HIDDEN = {"phase", "tokens", "epoch", "lr", "grad_norm", "mfu", "app"}


@dataclass(frozen=True)
class Event:
    """One status change: `kind` is start, cached, done, failed, progress, note (any other stage line) or job."""

    t: float
    stage: str
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True)
class StageInfo:
    """What the plan says about a stage before it runs: its kind and the totals its progress counts towards."""

    name: str
    kind: str
    total_steps: int | None = None
    target_replicas: int | None = None


@dataclass(frozen=True)
class StageView:
    name: str
    kind: str
    state: str = PENDING
    started: float | None = None
    elapsed: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    total_steps: int | None = None
    target_replicas: int | None = None

    @property
    def fraction(self) -> float | None:
        """Share of the stage done, when it counts steps towards a known total."""
        step = self.fields.get("step")
        if self.state == DONE_STATE:
            return 1.0 if self.total_steps else None
        if isinstance(step, int) and self.total_steps:
            return min(1.0, step / self.total_steps)
        return None

    @property
    def detail(self) -> str:
        """The stage's own progress in a few words: rows, step/total and losses, replicas; else its last line."""
        parts = []
        for key in [*SHOWN, *sorted(set(self.fields) - set(SHOWN) - HIDDEN)]:
            if key not in self.fields or self.fields[key] is None:
                continue
            value = self.fields[key]
            if key == "step" and self.total_steps:
                value = f"{value}/{self.total_steps}"
            elif key == "replicas" and self.target_replicas:
                value = f"{value}/{self.target_replicas} ready"
            parts.append(f"{key.replace('_', ' ')} {_short(value)}")
        return " · ".join(parts) if parts else self.note


@dataclass(frozen=True)
class RunView:
    stages: list[StageView]
    started: float | None = None
    now: float | None = None
    job_status: str | None = None

    @property
    def current(self) -> StageView | None:
        return next((s for s in self.stages if s.state == RUNNING), None)

    @property
    def elapsed(self) -> float | None:
        return None if self.started is None or self.now is None else self.now - self.started


def stage_infos(plan) -> list[StageInfo]:
    """The stages of a `pipelines.plan.Plan` with the totals their progress lines count towards."""
    return [StageInfo(s.name, s.kind, _total_steps(s.config), _target_replicas(s.config)) for s in plan.stages]


def _total_steps(config: dict[str, Any]) -> int | None:
    """Any training stage's step budget: `schedule.steps` (pretrain, sft, dpo, ...) or a top-level `steps`."""
    schedule = config.get("schedule") if isinstance(config.get("schedule"), dict) else {}
    for value in (schedule.get("steps"), config.get("steps"), config.get("total_steps")):
        if isinstance(value, int):
            return value
    return None


def _target_replicas(config: dict[str, Any]) -> int | None:
    auto = config.get("autoscaling") if isinstance(config.get("autoscaling"), dict) else {}
    value = auto.get("min_replicas", config.get("num_replicas"))
    return value if isinstance(value, int) and value > 0 else None


# --- events ----------------------------------------------------------------------------------------------------


def parse_line(line: str, t: float) -> Event | None:
    """The event a job log line reports, or None for lines that are not about a stage."""
    match = LINE.search(line.rstrip())
    if match is None:
        return None
    stage, body = match["stage"], match["body"].strip()
    if body.startswith("starting"):
        return Event(t, stage, "start", text=body)
    if body.startswith("cached"):
        return Event(t, stage, "cached", text=body)
    if done := DONE.match(body):
        return Event(t, stage, "done", {"seconds": float(done["seconds"])}, body)
    if body.startswith("failed"):
        return Event(t, stage, "failed", text=body.removeprefix("failed").lstrip(": "))
    if body.startswith("progress"):
        return Event(t, stage, "progress", {m["key"]: _value(m["value"]) for m in FIELD.finditer(body)}, body)
    return Event(t, stage, "note", text=body)


def parse_log(text: str, t: float = 0.0) -> list[Event]:
    """Every event of a whole log, all stamped `t` (a recorded log has no receive times)."""
    return [e for line in text.splitlines() if (e := parse_line(line, t)) is not None]


def job_event(status: str, t: float) -> Event:
    return Event(t, JOB, "job", {"status": status})


def _value(raw: str) -> Any:
    if raw in ("n/a", "None"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# --- the view ----------------------------------------------------------------------------------------------------


def view(stages: Iterable[StageInfo], events: Iterable[Event], now: float, started: float | None = None) -> RunView:
    """Fold status events (in arrival order) into the state of every stage at time `now`."""
    by_name = {s.name: StageView(s.name, s.kind, total_steps=s.total_steps, target_replicas=s.target_replicas)
               for s in stages}  # fmt: skip
    job_status = None
    for event in events:
        if event.kind == "job":
            job_status = event.fields["status"]
        elif event.stage in by_name:
            by_name[event.stage] = _apply(by_name[event.stage], event)
    result = [_with_elapsed(s, now, job_status) for s in by_name.values()]
    return RunView(result, started=started, now=now, job_status=job_status)


def _apply(stage: StageView, event: Event) -> StageView:
    if event.kind == "start":
        return replace(stage, state=RUNNING, started=event.t, fields={}, note="")
    if event.kind == "cached":
        return replace(stage, state=CACHED, note="skipped: output already committed")
    if event.kind == "done":
        return replace(stage, state=DONE_STATE, elapsed=event.fields["seconds"])
    if event.kind == "failed":
        return replace(stage, state=FAILED, note=event.text.splitlines()[0] if event.text else "failed",
                       elapsed=None if stage.started is None else event.t - stage.started)  # fmt: skip
    if event.kind == "progress":
        state = RUNNING if stage.state == PENDING else stage.state
        started = stage.started if stage.started is not None else event.t
        return replace(stage, state=state, started=started, fields={**stage.fields, **event.fields})
    return replace(stage, note=event.text)


def _with_elapsed(stage: StageView, now: float, job_status: str | None) -> StageView:
    """Running stages tick until the job ends; a job that ended under a running stage ended that stage too."""
    if stage.state != RUNNING:
        return stage
    elapsed = None if stage.started is None else max(0.0, now - stage.started)
    if job_status in ("FAILED", "STOPPED"):
        return replace(stage, state=FAILED if job_status == "FAILED" else STOPPED, elapsed=elapsed)
    return replace(stage, elapsed=elapsed)


# --- rendering ---------------------------------------------------------------------------------------------------

STYLE = {PENDING: "dim", RUNNING: "cyan", CACHED: "blue", DONE_STATE: "green", FAILED: "red", STOPPED: "yellow"}
LABEL = {PENDING: "pending", RUNNING: "running", CACHED: "skipped (cached)", DONE_STATE: "done", FAILED: "failed",
         STOPPED: "stopped"}  # fmt: skip


def table(run: RunView, title: str = ""):
    """A rich Table of the view: one row per stage with its state, elapsed time, a bar when it counts steps and
    its own progress in words."""
    from rich.progress_bar import ProgressBar
    from rich.spinner import Spinner
    from rich.table import Table
    from rich.text import Text

    elapsed = f" — {_duration(run.elapsed)}" if run.elapsed is not None else ""
    status = f" — job {run.job_status}" if run.job_status else ""
    out = Table(title=f"{title}{elapsed}{status}", title_justify="left", expand=False)
    for col in ("stage", "kind", "state", "elapsed", "progress", "detail"):
        out.add_column(col, no_wrap=col != "detail")
    for s in run.stages:
        style = STYLE[s.state]
        state = Spinner("dots", text=Text(LABEL[s.state], style=style)) if s.state == RUNNING else \
            Text(LABEL[s.state], style=style)  # fmt: skip
        bar = ProgressBar(total=1.0, completed=s.fraction, width=20) if s.fraction is not None else Text("")
        out.add_row(s.name, s.kind, state, _duration(s.elapsed), bar, Text(s.detail, overflow="ellipsis"))
    return out


def plain_lines(run: RunView) -> list[str]:
    """The same view as text lines, one per stage (for logs and tests)."""
    return [f"{s.name}\t{LABEL[s.state]}\t{_duration(s.elapsed)}\t{s.detail}" for s in run.stages]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


# --- the live display ----------------------------------------------------------------------------------------------


class LiveProgress:
    """Feeds job log chunks into events and keeps a rich Live table of them on the console while in `with`."""

    def __init__(self, plan, console, title: str = "") -> None:
        self.stages = stage_infos(plan)
        self.console = console
        self.title = title or f"{plan.pipeline} — run {plan.run_id}"
        self.events: list[Event] = []
        self.tail: deque[str] = deque(maxlen=40)  # the last raw lines, shown when the run fails
        self.partial = ""
        self.started = time.time()
        self.live = None

    def __enter__(self) -> LiveProgress:
        from rich.live import Live

        self.live = Live(get_renderable=self.renderable, console=self.console, refresh_per_second=4, transient=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.refresh()
        self.live.__exit__(*exc)

    def feed(self, chunk: str) -> None:
        """Take a chunk of the job log (it may end mid-line)."""
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()
        now = time.time()
        for line in lines:
            self.tail.append(line)
            if (event := parse_line(line, now)) is not None:
                self.events.append(event)

    def finish(self, status: str) -> None:
        self.feed("\n")
        self.events.append(job_event(status, time.time()))

    def renderable(self):
        return table(view(self.stages, list(self.events), time.time(), self.started), self.title)

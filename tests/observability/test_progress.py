"""The live progress model on recorded job logs: lines -> events -> the view each stage shows, and its rendering."""

from __future__ import annotations

import io

from rich.console import Console

from cli.progress import (
    CACHED,
    DONE_STATE,
    FAILED,
    PENDING,
    RUNNING,
    StageInfo,
    job_event,
    parse_line,
    plain_lines,
    table,
    view,
)

STAGES = [
    StageInfo("curate", "data"),
    StageInfo("tokenizer", "tokenizer"),
    StageInfo("pretrain", "pretrain", total_steps=60),
    StageInfo("serve", "serve", target_replicas=1),
]

# (receive time, line) as a job of pipelines/examples/tiny.yaml writes them, Ray's worker prefixes included.
RECORDED = [
    (0.0, "12:00:00 [curate] cached: /runs/tiny/curate/467d4ce55a8a1e0c"),
    (0.1, "12:00:00 [tokenizer] starting (tokenizer) -> /runs/tiny/tokenizer/42c57e36cd1e3d39"),
    (1.0, "12:00:01 [tokenizer] training byte-level BPE (vocab 2048) on 1770 documents"),
    (2.0, "12:00:02 [tokenizer] done in 1.9s"),
    (2.1, "12:00:02 [pretrain] starting (pretrain) -> /runs/tiny/pretrain/ba02ebc3fb1c9cf1"),
    (3.0, "12:00:03 [pretrain] training 60 steps on 2 worker(s), ZeRO-2, fp32"),
    (9.0, "(RayTrainWorker pid=4242) [pretrain] 2 worker(s) on cpu, 1 torch threads each"),
    (20.0, "(RayTrainWorker pid=4242) [pretrain] progress step=10 loss=7.06 lr=0.00296 grad_norm=1.023 "
           "tokens_per_s=805.6 mfu=n/a tokens=20480 epoch=0"),
    (30.0, "(RayTrainWorker pid=4242) [pretrain] progress step=30 loss=5.29 lr=0.00177 eval_loss=5.195"),
]  # fmt: skip


def events(recorded):
    return [e for t, line in recorded if (e := parse_line(line, t)) is not None]


def by_name(run):
    return {s.name: s for s in run.stages}


def test_a_recorded_run_shows_cached_done_running_and_pending_stages_with_training_progress():
    run = view(STAGES, events(RECORDED), now=32.1, started=0.0)
    s = by_name(run)
    assert [s[n].state for n in ("curate", "tokenizer", "pretrain", "serve")] == [CACHED, DONE_STATE, RUNNING, PENDING]
    assert s["tokenizer"].elapsed == 1.9, "a finished stage shows the driver's own duration"
    assert s["pretrain"].elapsed == 30.0, "a running stage ticks from its start line"
    assert s["pretrain"].fraction == 0.5
    assert s["pretrain"].detail == "step 30/60 · loss 5.29 · eval loss 5.195 · tokens per s 805.6"
    assert s["tokenizer"].detail == "training byte-level BPE (vocab 2048) on 1770 documents"
    assert run.current is s["pretrain"]
    assert plain_lines(run)[2] == f"pretrain\trunning\t30.0s\t{s['pretrain'].detail}"


def test_data_rows_and_serve_replicas_are_the_stage_s_own_progress():
    recorded = [
        (0.0, "10:00:00 [curate] starting (data) -> /runs/t/curate/k"),
        (5.0, "10:00:05 [curate] progress phase=dedup rows_read=2000"),
        (9.0, "10:00:09 [curate] rows in 2000 -> out 1770"),
        (9.5, "10:00:09 [curate] done in 9.4s"),
        (10.0, "10:00:10 [serve] starting (serve) -> /runs/t/serve/k"),
        (40.0, "10:00:40 [serve] waiting for 'tiny': DEPLOYING; LLMServer:tiny: UPDATING"),
    ]
    mid = by_name(view(STAGES, events(recorded[:2]), now=6.0))
    assert mid["curate"].detail == "rows read 2,000"
    s = by_name(view(STAGES, events(recorded), now=41.0))
    assert s["curate"].state == DONE_STATE and s["curate"].elapsed == 9.4
    assert s["serve"].detail == "waiting for 'tiny': DEPLOYING; LLMServer:tiny: UPDATING"
    ready = recorded + [(70.0, "10:01:10 [serve] progress app=tiny replicas=1 endpoint=http://127.0.0.1:8000/v1")]
    assert by_name(view(STAGES, events(ready), now=71.0))["serve"].detail == (
        "replicas 1/1 ready · endpoint http://127.0.0.1:8000/v1"
    )


def test_an_rlhf_stage_shows_its_step_and_reward_like_any_training_stage():
    stages = [StageInfo("align", "grpo", total_steps=8)]
    line = "(ActorGroup pid=7) [align] progress step=3 reward=0.42 kl=0.013 entropy=2.1"
    s = view(stages, events([(5.0, "[align] starting (grpo) -> /x"), (9.0, line)]), now=9.0).stages[0]
    assert s.fraction == 3 / 8
    assert s.detail == "step 3/8 · reward 0.42 · kl 0.013 · entropy 2.1"


def test_a_failed_stage_and_a_stopped_job():
    failed = [(0.0, "[curate] starting (data) -> /x"),
              (4.0, "10:00:04 [curate] failed: stages.curate.inputs[0]: nothing matches '/data/*.jsonl'")]  # fmt: skip
    s = view(STAGES, events(failed) + [job_event("FAILED", 4.5)], now=5.0)
    assert by_name(s)["curate"].state == FAILED
    assert by_name(s)["curate"].detail == "stages.curate.inputs[0]: nothing matches '/data/*.jsonl'"
    assert by_name(s)["tokenizer"].state == PENDING and s.job_status == "FAILED"
    stopped = view(STAGES, events(failed[:1]) + [job_event("STOPPED", 3.0)], now=3.0)
    assert by_name(stopped)["curate"].state == "stopped", "a stage the job ended under is not shown as running"


def test_lines_that_are_not_about_a_stage_are_ignored():
    assert parse_line("2026-01-01 12:00:00,000\tINFO worker.py:1 -- Connecting to existing Ray cluster", 0) is None
    assert parse_line("LLMCTL_SUMMARY {\"run_id\": \"t\"}", 0) is None
    assert view(STAGES, events([(0.0, "[other] starting (data) -> /x")]), now=1.0).stages[0].state == PENDING


def test_the_table_renders_every_stage_state():
    run = view(STAGES, events(RECORDED), now=32.1, started=0.0)
    out = io.StringIO()
    Console(file=out, width=160, force_terminal=False, color_system=None).print(table(run, "tiny — run tiny-1"))
    text = out.getvalue()
    assert "tiny — run tiny-1 — 32.1s" in text
    for expected in ("skipped (cached)", "done", "running", "pending", "step 30/60", "1.9s", "30.0s"):
        assert expected in text, expected

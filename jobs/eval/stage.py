"""The `eval` stage: every model of `models` scored on the same documents, questions and prompts.

Inputs are read and checked on the driver first (a malformed question file fails before any model loads). The
scoring is one Ray Data pass over (model, item) rows through `ModelScorer` actors; per-item results come back to
the driver, which writes the comparison table and returns each model's metrics for the stage marker.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

from jobs.context import StageContext
from jobs.eval import report
from jobs.eval.inputs import ModelRef, Work, load_work, resolve_models
from jobs.eval.scoring import ModelScorer, ScoreSettings
from pipelines.spec.eval import EvalStage


def run(ctx: StageContext) -> dict[str, Any]:
    started = time.time()
    spec: EvalStage = ctx.spec
    models = resolve_models(ctx, spec)
    work = load_work(ctx, spec)
    ctx.log("scoring %d model(s) on %d documents, %d questions and %d prompts", len(models), len(work.documents),
            len(work.questions), len(work.prompts))  # fmt: skip
    results = score(models, work, settings(spec), spec)
    table = report.write(ctx.out_uri, f"Evaluation: {ctx.pipeline_name} / {ctx.name}", models, work, results)
    for row in table["models"]:
        ctx.log("%s", ", ".join(f"{k}={_short(v)}" for k, v in row.items() if k != "uri"))
    return {
        "models": {row["model"]: {k: v for k, v in row.items() if k != "model"} for row in table["models"]},
        "rows": {"documents": len(work.documents), "questions": len(work.questions), "prompts": len(work.prompts)},
        "results": ctx.path("results.md"),
        "wall_s": round(time.time() - started, 3),
    }


def settings(spec: EvalStage) -> ScoreSettings:
    return ScoreSettings(
        prompt_format=spec.prompt_format,
        seq_len=spec.seq_len,
        max_new_tokens=spec.max_new_tokens,
        batch_size=spec.batch_size,
        use_gpu=spec.use_gpu,
    )


def score(models: list[ModelRef], work: Work, settings: ScoreSettings, spec: EvalStage) -> dict[str, report.Results]:
    """model uri -> task -> one result per item in item order, from one Ray Data pass over every model's items."""
    import ray.data

    rows = [{"model": m.uri, "task": task, "index": index, "payload": json.dumps(payload)}
            for m in models for task, index, payload in work.items()]  # fmt: skip
    resources: dict[str, Any] = {"num_cpus": spec.num_cpus, **({"num_gpus": 1} if spec.use_gpu else {})}
    scored = ray.data.from_items(rows).map_batches(
        ModelScorer,
        fn_constructor_kwargs={"settings": settings},
        batch_size=spec.batch_size,
        batch_format="numpy",
        concurrency=1,
        **resources,
    )
    found: dict[str, dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for row in scored.take_all():
        found[row["model"]][row["task"]][int(row["index"])] = json.loads(row["result"])
    assert sum(len(items) for tasks in found.values() for items in tasks.values()) == len(rows), "an item was lost"
    return {uri: {task: [by_index[i] for i in sorted(by_index)] for task, by_index in tasks.items()}
            for uri, tasks in found.items()}  # fmt: skip


def _short(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value

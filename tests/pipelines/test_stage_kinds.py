"""A stage kind is one declaration: a spec class naming its runner; the plan, the driver and the CLI read it."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

import pytest
from pydantic import Field, create_model

from jobs import driver
from pipelines import plan, storage
from pipelines.errors import SpecError
from pipelines.spec import STAGE_CLASSES, Pipeline, StageBase


class ToyStage(StageBase):
    """A kind defined here, as a new spec module would: its config, its runner and nothing else."""

    kind: Literal["toy"] = Field(description="Stage kind: counts the words of a text.")
    runner: ClassVar[str] = f"{__name__}:run_toy"
    reference_fields: ClassVar[tuple[str, ...]] = ("after",)
    text: str = Field(description="Words to count.")
    after: str | None = Field(None, description="A stage to run after.")


def run_toy(ctx) -> dict:
    """The toy kind's runner module (this one): writes an artifact and returns metrics."""
    storage.write_text(ctx.path("count.txt"), str(len(ctx.spec.text.split())))
    return {"words": len(ctx.spec.text.split()), "read": sorted(ctx.inputs)}


# The one line a new kind adds to the union, here in a Pipeline of the test's own.
Stage = Annotated[Union[(*STAGE_CLASSES, ToyStage)], Field(discriminator="kind")]  # noqa: UP007
ToyPipeline = create_model("ToyPipeline", __base__=Pipeline, stages=(dict[str, Stage], ...))


@pytest.mark.cluster
def test_a_new_kind_plans_and_runs(ray_session, tmp_path):
    spec = ToyPipeline.model_validate({"name": "toys", "storage": str(tmp_path), "stages": {
        "first": {"kind": "toy", "text": "one two three"},
        "second": {"kind": "toy", "text": "four five", "after": "first"},
    }})  # fmt: skip
    p = plan.build(spec)
    assert [(s.name, s.runner, s.always_run) for s in p.stages] == [
        ("first", "tests.pipelines.test_stage_kinds:run_toy", False),
        ("second", "tests.pipelines.test_stage_kinds:run_toy", False),
    ]
    assert p.stages[1].inputs == {"first": p.stages[0].uri}, "reference fields order and chain toy stages too"
    outputs: dict = {}
    for stage in p.stages:
        outputs[stage.name], outcome = driver.run_stage(p, spec, stage, outputs)
        assert outcome == "ran"
    assert outputs["second"].marker["metrics"] == {"words": 2, "read": ["first"]}
    assert storage.read_text(storage.join(p.stages[0].uri, "count.txt")) == "3"
    again = driver.run_stage(p, spec, p.stages[0], {})
    assert again[1] == "cached"


def test_every_kind_names_an_importable_runner():
    from jobs.registry import load_runner

    for cls in STAGE_CLASSES:
        module, _, func = cls.runner.partition(":")
        assert module and func, cls
    assert [c.__name__ for c in STAGE_CLASSES if c.always_run] == ["ServeStage"], "a running app is redeployed"
    assert load_runner("jobs.tokenizer:run").__name__ == "run"
    with pytest.raises(SpecError, match="stage runner 'jobs.tokenizer:nope': module 'jobs.tokenizer' has no function"):
        load_runner("jobs.tokenizer:nope")
    with pytest.raises(SpecError, match="cannot import module 'jobs.nowhere'"):
        load_runner("jobs.nowhere:run")

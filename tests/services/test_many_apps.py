"""Two pipelines' apps on one cluster: each at its own route and both behind the gateway's one base URL by model id;
a name another pipeline holds refused before anything is touched; and LoRA adapters from an sft stage
(lora.merge: false) served on the second app's model: the first one rolls that app once to turn LoRA on while the
other app's requests all succeed, later ones load into the running replica. Tests run in file order."""

from __future__ import annotations

import os

import httpx
import openai
import pytest
from click.testing import CliRunner

from cli.serve import serve as serve_cli
from pipelines.errors import StageError
from services import lifecycle
from services.client import gateway_url
from tests.services.conftest import API_KEY, APP, ServedApp, running_ids, serve_spec, stage_context
from tests.services.load import Load

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

OTHER_APP = "second"
ADAPTER = "tuned"


@pytest.fixture(scope="module")
def second_app(served_app, tmp_path_factory):
    """Another pipeline's app beside the session's: one replica of a model directory of its own (LoRA off)."""
    from services import stage
    from tests.services.tiny_model import build_tiny_llama

    export = tmp_path_factory.mktemp("other-pretrain")
    build_tiny_llama(str(export / "model"))
    spec = {**serve_spec("pretrain", served_app.port), "name": OTHER_APP,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 2}}  # fmt: skip
    ctx = stage_context(str(tmp_path_factory.mktemp("other")), spec, str(export), pipeline="other-team")
    metrics = stage.run(ctx)
    endpoint = metrics["endpoint"]
    yield ServedApp(OTHER_APP, endpoint, endpoint.removesuffix("/v1"), API_KEY, metrics, str(export / "model"), ctx,
                    str(export))  # fmt: skip
    if OTHER_APP in lifecycle.records():  # the last test removes it; an earlier failure may not have
        lifecycle.down(OTHER_APP)


@pytest.fixture(scope="module")
def adapter_dir(ray_session, second_app, tmp_path_factory) -> str:
    """An sft stage's adapter-only export, trained on the second app's model directory."""
    from jobs.demo.chat import write_demo_chat
    from jobs.train import sft
    from pipelines.spec.post import SFTStage
    from tests.jobs.train.conftest import post_context

    chat = str(tmp_path_factory.mktemp("chat"))
    write_demo_chat(chat, n_sft=200, n_pairs=10, seed=0)
    spec = SFTStage(
        kind="sft", model=second_app.model_dir, data=f"{chat}/sft.jsonl",
        lora={"rank": 8, "alpha": 32, "merge": False}, optim={"lr": 2e-2, "warmup_steps": 1},
        schedule={"steps": 8, "seq_len": 128, "micro_batch_size": 8, "eval_every": 8, "checkpoint_every": 8},
    )  # fmt: skip
    out = str(tmp_path_factory.mktemp("sft"))
    sft.run(post_context("sft", spec, out))
    return f"{out}/model"


def key() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def listed(base: str) -> list[str]:
    return sorted(m["id"] for m in httpx.get(f"{base}/models", headers=key(), timeout=60).json()["data"])


def greedy(base: str, model: str) -> str:
    body = {"model": model, "prompt": "the cat runs", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    resp = httpx.post(f"{base}/completions", json=body, headers=key(), timeout=120)
    resp.raise_for_status()
    assert resp.json()["model"] == model
    return resp.json()["choices"][0]["text"]


def test_two_pipelines_apps_answer_by_model_id_at_one_base_url(served_app, second_app):
    assert served_app.endpoint.endswith(f"/{APP}/v1") and second_app.endpoint.endswith(f"/{OTHER_APP}/v1")
    base = gateway_url(served_app.endpoint)
    assert base == gateway_url(second_app.endpoint) and base.endswith(f":{second_app.port}/v1")
    client = openai.OpenAI(base_url=base, api_key=API_KEY, max_retries=0, timeout=120)
    assert sorted(m.id for m in client.models.list().data) == sorted([APP, OTHER_APP])
    for model in (APP, OTHER_APP):
        reply = client.completions.create(model=model, prompt="the cat", max_tokens=4, temperature=0)
        assert reply.model == model and reply.choices[0].text
    # Each app also answers at its own route, without the gateway's hop, and lists only its own model there.
    assert listed(second_app.endpoint) == [OTHER_APP] and listed(served_app.endpoint) == [APP]
    with pytest.raises(openai.NotFoundError, match="The model 'nope' does not exist on this cluster"):
        client.completions.create(model="nope", prompt="x", max_tokens=2)

    status = CliRunner().invoke(serve_cli, ["status"])
    assert status.exit_code == 0, status.output
    lines = [line for line in status.output.splitlines() if not line.startswith(" ")]
    assert [line.split()[0] for line in lines] == sorted([APP, OTHER_APP]) + ["llmctl-gateway"]
    assert lines[-1].endswith(base)


def test_a_name_another_pipeline_holds_is_refused_and_its_app_keeps_serving(served_app, second_app, tmp_path):
    from services import stage

    before = running_ids(APP)
    spec = {**serve_spec("pretrain", second_app.port), "name": APP}
    with pytest.raises(StageError) as info:
        stage.run(stage_context(str(tmp_path), spec, second_app.export, pipeline="intruder"))
    assert str(info.value) == (
        f"stages.serve.name: the Serve application '{APP}' on this cluster belongs to pipeline 'tiny-chat' (it "
        f"serves {lifecycle.load_record(APP).model_source}), not to pipeline 'intruder'. Give this app another "
        f"name (`--set serve.name=...`), or remove that one first with `llmctl serve down {APP}`."
    )
    assert running_ids(APP) == before and lifecycle.load_record(APP).pipeline == "tiny-chat"


def test_adapters_are_served_on_their_base_app_which_rolls_once_while_the_other_app_serves(
    served_app, second_app, adapter_dir, tmp_path
):
    """The second app runs without LoRA: the first adapter's serve stage turns it on, a rolling update of that app
    alone, while a client of the first app keeps asking through the gateway. Later adapters of the same base load
    into the running replica: one copy of the base weights serves them all."""
    from services import stage

    assert "adapter_model.safetensors" in os.listdir(adapter_dir) and "config.json" not in os.listdir(adapter_dir)
    first_ids, second_ids = running_ids(APP), running_ids(OTHER_APP)
    base_answer = greedy(second_app.endpoint, OTHER_APP)
    trickle = Load(served_app.base_url.rsplit("/", 1)[0], APP, API_KEY, max_requests=3000, max_seconds=400,
                   pause_s=0.5)  # the first app, through the gateway (/v1 at the proxy's root)
    trickle.concurrency(1)
    try:
        spec = {**serve_spec(adapter_dir, second_app.port), "name": ADAPTER}
        metrics = stage.run(stage_context(str(tmp_path / "a"), spec, second_app.export, pipeline="tuners"))
    finally:
        trickle.stop()
    assert trickle.failed == 0 and trickle.sent > 3, (trickle.outcomes, trickle.errors[:3])
    assert running_ids(APP) == first_ids, "the other app was not touched"
    rolled = running_ids(OTHER_APP)
    assert rolled.isdisjoint(second_ids), "turning LoRA on rolled the base app's replicas"
    assert (metrics["app"], metrics["model"], metrics["endpoint"]) == (OTHER_APP, ADAPTER, second_app.endpoint)
    assert metrics["base_model"] == second_app.model_dir and metrics["model_source"] == adapter_dir
    assert lifecycle.load_record(OTHER_APP).adapters[ADAPTER].pipeline == "tuners"
    assert listed(second_app.endpoint) == [OTHER_APP, ADAPTER]
    tuned = greedy(second_app.endpoint, ADAPTER)
    assert tuned != base_answer and greedy(second_app.endpoint, OTHER_APP) == base_answer
    assert greedy(gateway_url(second_app.endpoint), ADAPTER) == tuned, "the gateway routes the adapter's id"

    spec = {**serve_spec(adapter_dir, second_app.port), "name": f"{ADAPTER}-2"}
    stage.run(stage_context(str(tmp_path / "b"), spec, second_app.export, pipeline="tuners"))
    assert listed(second_app.endpoint) == [OTHER_APP, ADAPTER, f"{ADAPTER}-2"] and running_ids(OTHER_APP) == rolled
    assert lifecycle.down(f"{ADAPTER}-2") == {"name": f"{ADAPTER}-2", "deleted": True, "adapter_of": OTHER_APP}
    assert listed(second_app.endpoint) == [OTHER_APP, ADAPTER] and running_ids(OTHER_APP) == rolled

    assert lifecycle.down(OTHER_APP) == {"name": OTHER_APP, "deleted": True}
    assert listed(gateway_url(served_app.endpoint)) == [APP], "the gateway stops routing to a removed app at once"

"""One tiny model and one deployed llmctl Serve app shared by the serving tests (vLLM on CPU starts slowly).

The app is deployed through the real stage runner (services.stage:run) on the session's own Ray head, with
Serve's proxy on a free port, and removed (only it) when the session ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import free_port
from tests.services.tiny_model import build_tiny_llama

API_KEY_ENV = "LLMCTL_TEST_API_KEY"
API_KEY = "test-key-0123456789"
APP = "tiny"
MAX_TOKENS_CAP = 64
MAX_MODEL_LEN = 256
MAX_REQUEST_BYTES = 16_384


@dataclass(frozen=True)
class ServedApp:
    name: str
    endpoint: str  # OpenAI base URL, …/v1
    base_url: str  # proxy root, for raw HTTP
    api_key: str
    metrics: dict
    model_dir: str
    ctx: Any  # the StageContext it was deployed from, to run the stage again
    export: str = ""  # the directory whose model/ it serves, as a training stage's output holds it

    @property
    def port(self) -> int:
        from urllib.parse import urlparse

        return urlparse(self.endpoint).port


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return build_tiny_llama(str(tmp_path_factory.mktemp("tiny-llama")))


def serve_spec(model: str, port: int) -> dict:
    return {
        "kind": "serve",
        "model": model,
        "name": APP,
        # Short delays and windows so the autoscaling test sees 1 -> 2 -> 1 within minutes.
        "autoscaling": {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 2,
            "upscale_delay_s": 1,
            "downscale_delay_s": 5,
            "look_back_period_s": 4,
            "metrics_interval_s": 1,
        },
        # 64 MiB KV cache: the machine is shared; eager mode: no compile step at start. Engine metrics at /metrics
        # (the example pipeline's app keeps the default, Ray's metrics).
        "engine": {"max_model_len": MAX_MODEL_LEN, "kv_cache_bytes": 64 << 20, "enforce_eager": True,
                   "metrics": "endpoint"},  # fmt: skip
        "placement": {"cpus_per_replica": 1},
        "http": {"host": "127.0.0.1", "port": port},
        "api_key_env": API_KEY_ENV,
        "limits": {"max_request_bytes": MAX_REQUEST_BYTES, "max_tokens": MAX_TOKENS_CAP},
        "deploy_timeout_s": 600,
    }


def stage_context(tmp_dir: str, spec: dict, pretrain_uri: str, pipeline: str = "tiny-chat"):
    """A StageContext as the job driver builds it, with a finished 'pretrain' stage whose output is pretrain_uri."""
    from jobs.context import StageContext, StageOutput
    from pipelines.spec.serve import ServeStage

    os.makedirs(os.path.join(tmp_dir, "serve"), exist_ok=True)
    return StageContext(
        name="serve",
        kind="serve",
        spec=ServeStage.model_validate(spec),
        pipeline_name=pipeline,
        run_id="test",
        cache_key="test",
        out_uri=os.path.join(tmp_dir, "serve"),
        inputs={"pretrain": StageOutput("pretrain", "pretrain", pretrain_uri, {})},
    )


@pytest.fixture(scope="session")
def served_app(ray_session, tiny_model_dir, tmp_path_factory):
    from ray import serve

    from services import stage

    # The stage reads ".../<pretrain stage>/model": put the tiny model where a training stage exports it.
    export = tmp_path_factory.mktemp("pretrain")
    os.symlink(tiny_model_dir, export / "model")
    os.environ[API_KEY_ENV] = API_KEY
    ctx = stage_context(str(tmp_path_factory.mktemp("run")), serve_spec("pretrain", free_port()), str(export))
    metrics = stage.run(ctx)
    endpoint = metrics["endpoint"]
    yield ServedApp(APP, endpoint, endpoint.removesuffix("/v1"), API_KEY, metrics, tiny_model_dir, ctx, str(export))
    if APP in serve.status().applications:
        serve.delete(APP)  # only our app: the session cluster may serve other tests' apps


def model_replicas(name: str = APP) -> list[dict]:
    """The replicas of the app's model deployment, as Serve's details list them."""
    from services import lifecycle

    deployments = lifecycle.serve_details()["applications"][name]["deployments"]
    return next(d for dname, d in deployments.items() if dname.startswith("LLMServer:"))["replicas"]


def running_ids(name: str = APP) -> set[str]:
    return {r["replica_id"] for r in model_replicas(name) if r["state"] == "RUNNING"}


def replica_states(name: str = APP) -> dict[str, int]:
    """Replica states of the model deployment, e.g. {'RUNNING': 1}."""
    from ray import serve

    app = serve.status().applications[name]
    model = next(d for dname, d in app.deployments.items() if dname.startswith("LLMServer:"))
    return {state.value if hasattr(state, "value") else str(state): n for state, n in model.replica_states.items()}


def requests_served(prometheus_text: str, counter: str, model: str) -> float:
    """vLLM's finished-request counter of `model` in Prometheus text, summed over its finish reasons (and engines)."""
    lines = [line for line in prometheus_text.splitlines() if line.startswith(counter + "{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if f'model_name="{model}"' in line)


def printed_curl(output: str) -> str:
    """The `curl` command in what `llmctl submit` prints (services.client.usage): from `curl` to the first line
    that does not continue with a backslash, as a user copies it."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("curl "))
    end = next(i for i in range(start, len(lines)) if not lines[i].rstrip().endswith("\\"))
    return "\n".join(lines[start : end + 1])


def run_in_shell(command: str, curl_home: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    """(HTTP status, JSON body) of a printed curl command run by bash with real curl. curl's own config file
    ($CURL_HOME/.curlrc) appends the status, so the command runs exactly as printed."""
    with open(os.path.join(curl_home, ".curlrc"), "w") as f:
        f.write('silent\nshow-error\nwrite-out = "\\n%{http_code}"\n')
    shell_env = {**os.environ, **(env or {}), "CURL_HOME": curl_home}
    done = subprocess.run(["bash", "-c", command], env=shell_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def taken_port_message(port: int, holder: str, fix: str) -> str:
    """The serve stage's error for a taken port; the free port it suggests is checked to be free and above."""
    from services import lifecycle

    free = lifecycle.next_free_port("127.0.0.1", port)
    assert free > port and not lifecycle.port_in_use("127.0.0.1", free)
    return (f"stages.serve.http.port: 127.0.0.1:{port} is already taken by {holder}. Either set stages.serve.http.port "
            f"to a free port (`--set serve.http.port={free}`), or {fix}.")  # fmt: skip


def wait_for(predicate, timeout_s: float, poll_s: float = 1.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.fixture
def settled_app(served_app):
    """The shared app back at one healthy replica (an earlier test may have scaled or rolled it)."""
    from services import lifecycle

    lifecycle.wait_running(APP, timeout_s=300, log=lambda _: None)
    wait_for(lambda: replica_states() == {"RUNNING": 1}, 180, what="one RUNNING replica")
    return served_app

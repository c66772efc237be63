"""`llmctl serve` is thin: arguments reach services.lifecycle, results are printed, user errors stay typed."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.serve import serve
from pipelines.errors import SpecError
from services import lifecycle

STATUS = {
    "name": "chat",
    "status": "RUNNING",
    "message": "",
    "endpoint": "http://127.0.0.1:8000/v1",
    "replicas": 1,
    "model_deployment": "LLMServer:chat",
    "deployments": {
        "LLMServer:chat": {
            "status": "HEALTHY",
            "replicas": {"RUNNING": 1},
            "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4.0},
        },
    },
}


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def fake(op):
        def record(*args, **kwargs):
            seen.append((op, args, kwargs))
            return STATUS

        return record

    for op in ("status", "scale", "down"):
        monkeypatch.setattr(lifecycle, op, fake(op))
    return seen


def test_status_prints_replicas_and_autoscaling(calls):
    result = CliRunner().invoke(serve, ["status", "chat", "--address", "http://h:8265"])
    assert result.exit_code == 0, result.output
    assert calls == [("status", ("chat", "http://h:8265"), {})]
    assert "chat  RUNNING  http://127.0.0.1:8000/v1" in result.output
    assert "(autoscaling 1..3, target 4.0 ongoing/replica)" in result.output


def test_scale_passes_only_given_bounds(calls):
    result = CliRunner().invoke(serve, ["scale", "chat", "--max", "3", "--target", "4"], env={"RAY_ADDRESS": ""})
    assert result.exit_code == 0, result.output
    (_, args, kwargs) = calls[0]
    assert args[0] == "chat" and kwargs == {
        "replicas": None,
        "min_replicas": None,
        "max_replicas": 3,
        "target_ongoing_requests": 4.0,
    }


def test_down_confirms(calls):
    result = CliRunner().invoke(serve, ["down", "chat"])
    assert result.exit_code == 0 and "Deleted Serve application 'chat'." in result.output


def test_scale_without_changes_is_a_spec_error_before_connecting():
    result = CliRunner().invoke(serve, ["scale", "chat", "--address", "http://127.0.0.1:1"])
    assert isinstance(result.exception, SpecError)
    assert "nothing to change" in str(result.exception)

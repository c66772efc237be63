"""What a job takes to a remote cluster: the project's code, the S3 location and never a credential; and the refusal
of a cluster on another Ray version. No cluster needed: the dashboard's answer is stubbed."""

from __future__ import annotations

import os

import pytest
import ray

from cluster import jobs, local
from pipelines import storage
from pipelines.errors import ClusterError


def test_a_cluster_on_another_ray_version_is_refused_with_both_versions(monkeypatch):
    monkeypatch.setattr(local, "dashboard_version", lambda url, timeout=2.0: {"ray_version": "2.9.3"})
    with pytest.raises(ClusterError) as err:
        jobs.resolve_target("http://10.0.0.7:8265")
    assert str(err.value) == (
        f"the cluster at http://10.0.0.7:8265 runs Ray 2.9.3 but this client has Ray {ray.__version__}; "
        f"install ray==2.9.3 here or run the cluster on Ray {ray.__version__}."
    )


def test_a_cluster_on_the_same_ray_version_is_accepted(monkeypatch):
    monkeypatch.setattr(local, "dashboard_version", lambda url, timeout=2.0: {"ray_version": ray.__version__})
    assert jobs.resolve_target("ray://head.example:10001") == jobs.Target("http://head.example:8265", False)


def test_nothing_answering_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(local, "dashboard_version", lambda url, timeout=2.0: None)
    with pytest.raises(ClusterError, match=r"cannot reach a Ray dashboard at http://10.0.0.7:8265 \(--address"):
        jobs.resolve_target("10.0.0.7:8265")


def test_the_job_carries_this_checkout_of_every_package():
    env = jobs.runtime_env({"EXTRA": "1"})
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert env["py_modules"] == [os.path.join(root, p) for p in jobs.PACKAGES]
    assert all(os.path.isfile(os.path.join(m, "__init__.py")) for m in env["py_modules"])
    assert env["env_vars"]["EXTRA"] == "1"


def test_only_the_s3_location_travels_with_a_job_never_credentials():
    shell = {
        "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "tok",
        "AWS_PROFILE": "dev", "AWS_SHARED_CREDENTIALS_FILE": "/home/me/.aws/credentials",
    }  # fmt: skip
    assert storage.job_env(shell) == {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_REGION": "eu-west-1"}

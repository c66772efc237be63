"""Storage helpers behave the same on a local directory and on S3 (a real moto server on loopback)."""

import pytest

from pipelines import storage
from pipelines.errors import StorageError
from tests.conftest import free_port, s3_server


@pytest.fixture(scope="module")
def s3_root():
    import boto3

    with s3_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        for k, v in env.items():
            mp.setenv(k, v)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="llm")
        yield "s3://llm/prefix"


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_root") + f"/{tmp_path.name}"


def test_write_read_list_expand_delete(root):
    storage.write_json(storage.join(root, "a", "_SUCCESS"), {"rows": 3})
    storage.write_text(storage.join(root, "a", "data", "part-1.jsonl"), "x\n")
    storage.write_text(storage.join(root, "a", "data", "part-2.jsonl"), "y\n")
    assert storage.read_json(storage.join(root, "a", "_SUCCESS")) == {"rows": 3}
    assert storage.exists(storage.join(root, "a", "_SUCCESS"))
    files = storage.list_files(storage.join(root, "a"), ".jsonl")
    assert [f.rsplit("/", 1)[1] for f in files] == ["part-1.jsonl", "part-2.jsonl"]
    assert storage.expand(storage.join(root, "a", "data", "*-2.jsonl")) == [files[1]]
    assert storage.expand(storage.join(root, "a", "data")) == files
    assert storage.fingerprint(files[0])["size"] == 2
    storage.delete_dir(storage.join(root, "a"))
    assert not storage.exists(storage.join(root, "a", "_SUCCESS"))


def test_upload_and_download_dir(root, tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    target = storage.join(root, "exported")
    storage.upload_dir(str(src), target)
    with storage.local_copy(target) as local:
        assert open(f"{local}/config.json").read() == "{}"


def test_missing_input_is_a_storage_error(root):
    with pytest.raises(StorageError, match="does not exist"):
        storage.fingerprint(storage.join(root, "nope.jsonl"))


def test_an_unreachable_store_is_named_with_what_to_check(tmp_path, monkeypatch):
    """Nothing answers at the endpoint: a one-line error naming the URI and the endpoint, also from the CLI."""
    from click.testing import CliRunner

    from cli.main import main

    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(StorageError, match=f"cannot reach 's3://llm/a.jsonl' \\(S3 endpoint: {endpoint}\\)"):
        storage.exists("s3://llm/a.jsonl")
    spec = tmp_path / "p.yaml"
    spec.write_text("name: p\nstages:\n  curate: {kind: data, inputs: ['s3://llm/corpus/*.jsonl']}\n")
    result = CliRunner().invoke(main, ["validate", str(spec)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"cannot reach 's3://llm/corpus/' (S3 endpoint: {endpoint})" in result.output
    assert "AWS_ENDPOINT_URL" in result.output

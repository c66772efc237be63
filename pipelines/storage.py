"""Artifact storage for local paths and s3:// URIs, through pyarrow.fs.

Every artifact location in llmctl is a URI string: an absolute local path or `s3://bucket/key`.
S3 credentials and endpoint come from the standard AWS chain (env vars, ~/.aws, instance role);
`AWS_ENDPOINT_URL` points at an S3-compatible server such as MinIO or moto.

Credentials never travel with a job: the cluster's nodes find their own through the same chain (an instance
profile, IRSA on Kubernetes, or the environment `ray start` / `llmctl cluster up` ran in). Only the settings
that say *which* store `s3://` means travel, so the submitting shell and the job read and write the same one.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pipelines.errors import StorageError

# Not secrets: where S3 is. A job gets the submitting shell's values (see `job_env`).
LOCATION_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def _reports_unreachable_storage(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A remote store that cannot be reached (wrong endpoint, no network, refused credentials) raises pyarrow's
    OSError deep inside a call; this turns it into a StorageError naming the URI and what to check. A missing file
    stays FileNotFoundError, which callers expect."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except OSError as exc:
            remote = next((a for a in args if isinstance(a, str) and is_remote(a)), None)
            if remote is None:
                raise
            where = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS's default"
            raise StorageError(
                f"storage: cannot reach '{remote}' (S3 endpoint: {where}): {str(exc).splitlines()[0]}. Check the "
                "bucket name, AWS_ENDPOINT_URL for MinIO or another S3-compatible store, your credentials and the "
                "network."
            ) from exc

    return wrapper


def job_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The S3 location settings set in this shell, for the job's runtime_env. Credentials (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) are never included: runtime_env is visible in the dashboard and
    the job's metadata."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in LOCATION_ENV if environ.get(name)}


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(uri: str, *parts: str) -> str:
    if is_remote(uri):
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


def absolute(uri: str, base: str | None = None) -> str:
    """Local paths become absolute (relative to `base` or the working directory); URIs stay as they are."""
    if is_remote(uri):
        return uri
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return os.path.abspath(os.path.join(base or os.getcwd(), os.path.expanduser(uri)))


def filesystem(uri: str):
    """(pyarrow FileSystem, path inside it) for a URI."""
    import pyarrow.fs as pafs

    if not is_remote(uri):
        return pafs.LocalFileSystem(), absolute(uri)
    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, Any] = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs = {"endpoint_override": host or scheme, "scheme": scheme if host else "https"}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), uri[len("s3://") :]
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises several types for unknown schemes
        raise StorageError(f"storage: cannot open '{uri}': {exc}. Use a local path or s3://bucket/prefix.") from exc


@_reports_unreachable_storage
def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


@_reports_unreachable_storage
def read_text(uri: str) -> str:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


@_reports_unreachable_storage
def write_text(uri: str, text: str) -> None:
    fs, path = filesystem(uri)
    parent = posixpath.dirname(path) if is_remote(uri) else os.path.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@_reports_unreachable_storage
def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


@_reports_unreachable_storage
def delete_dir(uri: str) -> None:
    """Remove a directory and everything under it; a missing directory is fine."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


@_reports_unreachable_storage
def list_files(uri: str, suffix: str = "") -> list[str]:
    """URIs of the files under a directory (recursive), sorted."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    prefix = uri[: len(uri) - len(path)] if is_remote(uri) else ""
    return sorted(prefix + i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


@_reports_unreachable_storage
def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a local directory to `uri` (a no-op copy when `uri` is the same local directory)."""
    import pyarrow.fs as pafs

    if not is_remote(uri) and os.path.abspath(local_dir) == absolute(uri):
        return
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, destination_filesystem=fs)


@_reports_unreachable_storage
def download_dir(uri: str, local_dir: str) -> str:
    """Copy `uri` into `local_dir` and return it; a local `uri` is returned as it is, without copying."""
    import pyarrow.fs as pafs

    if not is_remote(uri):
        return absolute(uri)
    fs, path = filesystem(uri)
    os.makedirs(local_dir, exist_ok=True)
    pafs.copy_files(path, local_dir, source_filesystem=fs)
    return local_dir


@contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local directory holding the contents of `uri`, for libraries that only read local paths."""
    if not is_remote(uri):
        yield absolute(uri)
        return
    tmp = tempfile.mkdtemp(prefix="llmctl-")
    try:
        yield download_dir(uri, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@_reports_unreachable_storage
def fingerprint(uri: str) -> dict[str, Any]:
    """Size and modification time of a file, so a changed input file changes the cache keys that read it."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"input '{uri}' does not exist. Check the path, or generate the demo data first.")
    mtime = info.mtime_ns if info.mtime_ns is not None else None
    return {"uri": uri, "size": info.size, "mtime_ns": mtime}


@_reports_unreachable_storage
def expand(pattern: str) -> list[str]:
    """Files matching a path, directory or glob (`*`, `?`, `[...]`), local or s3://; sorted."""
    import fnmatch

    import pyarrow.fs as pafs

    has_glob = any(c in pattern for c in "*?[")
    if not has_glob:
        fs, path = filesystem(pattern)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [pattern if is_remote(pattern) else absolute(pattern)]
        if info.type == pafs.FileType.Directory:
            return [f for f in list_files(pattern) if not os.path.basename(f).startswith(("_", "."))]
        return []
    first = min(pattern.index(c) for c in "*?[" if c in pattern)
    root = pattern[: pattern.rfind("/", 0, first) + 1] or "."
    candidates = list_files(root) if exists(root) else []
    full = pattern if is_remote(pattern) else absolute(pattern)
    return [c for c in candidates if fnmatch.fnmatchcase(c, full)]

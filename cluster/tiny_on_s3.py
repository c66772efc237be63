"""The example pipeline on a two-node cluster with every artifact on S3, all on this machine: an S3-compatible server
(moto, on loopback), a head and a worker node that find their credentials in their own environment, the demo data
uploaded to the bucket, and `llmctl submit pipelines/examples/tiny.yaml` pointed at both. Everything is stopped at
the end. Extra arguments go to `llmctl submit` (e.g. --set pretrain.schedule.steps=6).

    .venv/bin/python -m cluster.tiny_on_s3 [--set a.b=c ...]

It lives here, not in infra/, because it hands the loopback server throwaway keys, and infra/ holds no
credentials of any kind (a test checks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from cluster import local, multinode
from pipelines import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BUCKET = "llmctl-demo"
# Where tiny.yaml reads local files, and the same files in the bucket.
ON_S3 = {
    "curate.inputs": f"[s3://{BUCKET}/data/demo/*.jsonl]",
    "sft.data": f"s3://{BUCKET}/data/demo-chat/sft.jsonl",
    "dpo.data": f"s3://{BUCKET}/data/demo-chat/preference.jsonl",
    "align.prompts": f"s3://{BUCKET}/data/demo-chat/sft.jsonl",
    "eval.multiple_choice": f"s3://{BUCKET}/data/demo-chat/mc.jsonl",
}


def main(extra: list[str]) -> int:
    import boto3
    from moto.server import ThreadedMotoServer

    for needed in ("data/demo/manifest.json", "data/demo-chat/mc.jsonl"):
        if not os.path.exists(os.path.join(ROOT, needed)):
            print(f"error: {needed} is missing; run `make demo-data` first", file=sys.stderr)
            return 1
    port = local.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    # Both sides find these through the standard AWS chain; only the endpoint travels with the job.
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "demo",
                       "AWS_SECRET_ACCESS_KEY": "demo-secret", "AWS_REGION": "us-east-1"})  # fmt: skip
    root = f"/tmp/llmctl-s3-{os.getpid()}"  # short: Ray's socket paths live under it
    cluster = None
    try:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        for name in ("demo", "demo-chat"):
            storage.upload_dir(os.path.join(ROOT, "data", name), f"s3://{BUCKET}/data/{name}")
        cluster = multinode.start(multinode.plan(root))
        on_s3 = [arg for key, value in [("storage", f"s3://{BUCKET}/runs"), *ON_S3.items()]
                 for arg in ("--set", f"{key}={value}")]  # fmt: skip
        llmctl = os.path.join(os.path.dirname(sys.executable), "llmctl")
        submit = [llmctl, "submit", "pipelines/examples/tiny.yaml", "--address", cluster.dashboard_url, *on_s3, *extra]
        code = subprocess.run(submit, cwd=ROOT).returncode
        if code == 0:
            print("stored on S3:", len(storage.list_files(f"s3://{BUCKET}/runs")), "objects, e.g.",
                  *sorted(storage.list_files(f"s3://{BUCKET}/runs", "_SUCCESS")), sep="\n  ")  # fmt: skip
            ask = [sys.executable, "-m", "services.client", "tiny", "What is Ray?", "--address", cluster.dashboard_url]
            code = subprocess.run(ask, cwd=ROOT).returncode
        return code
    finally:
        if cluster is not None:
            multinode.stop(multinode.load(root))
        shutil.rmtree(root, ignore_errors=True)
        server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

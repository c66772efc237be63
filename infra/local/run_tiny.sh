#!/usr/bin/env bash
# The example pipeline on a two-node Ray cluster on this machine (a head and a worker node on loopback, each with
# its own resources and labels), submitted with --address exactly as to a remote cluster; the cluster is stopped
# at the end. Extra arguments go to `llmctl submit` (e.g. --set pretrain.schedule.steps=6).
#   infra/local/run_tiny.sh [--set a.b=c ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
LLMCTL=${LLMCTL:-.venv/bin/llmctl}
ROOT=${LLMCTL_MN_ROOT:-/tmp/llmctl-mn-$$}   # short: Ray's socket paths live under it

[ -f data/demo/manifest.json ] || "$PY" -m jobs.demo.corpus data/demo
[ -f data/demo-chat/sft.jsonl ] || "$PY" -m jobs.demo.chat data/demo-chat

"$PY" -m cluster.multinode up --root "$ROOT"
trap '"$PY" -m cluster.multinode down --root "$ROOT"; rm -rf "$ROOT"' EXIT
ADDRESS=$("$PY" -c "from cluster.multinode import load; print(load('$ROOT').dashboard_url)")
"$LLMCTL" submit pipelines/examples/tiny.yaml --address "$ADDRESS" "$@"
"$PY" -m cluster.multinode status --root "$ROOT"
# The tiny example ends with a serve stage; ask the endpoint once before the cluster goes away.
"$PY" -m services.client tiny "What is Ray?" --address "$ADDRESS"

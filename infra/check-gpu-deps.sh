#!/usr/bin/env bash
# Resolve the GPU install (`.[gpu]`: CUDA vLLM pinned to the torch the project pins) with pip's own resolver,
# installing nothing; exits non-zero, with pip's explanation, on a version conflict. Used by `make check-gpu-deps`
# and by the GPU image before it installs (infra/docker/Dockerfile).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --dry-run --ignore-installed --quiet --report /dev/null ".[gpu]"
echo "ok: .[gpu] resolves (vllm==$(sed -n 's/^gpu = \["vllm==\([^"]*\)"\].*/\1/p' pyproject.toml))"

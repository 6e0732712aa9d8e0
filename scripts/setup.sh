#!/usr/bin/env bash
# Create .venv and install vitgender with every extra. torch is pinned in pyproject.toml
# (an unpinned torch pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q -e ".[all]"
# The JS toolchain for the web tests and demo (pinned in web/package-lock.json; web/.npmrc skips
# onnxruntime-node's install script, which would fetch CUDA binaries from outside the npm registry).
if command -v npm >/dev/null; then
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi

#!/usr/bin/env bash
# Create .venv and install vitgender with every extra, and .venv-executorch for the ExecuTorch
# toolchain (it needs numpy >= 2, the main environment's TensorFlow stack numpy < 2; see
# vitgender/toolchains/side_env.py). torch is pinned in both (an unpinned torch pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q -e ".[all]"
python3 -m venv .venv-executorch
.venv-executorch/bin/python -m pip install -q -r requirements/executorch.txt
# The JS toolchain for the web tests and demo (pinned in web/package-lock.json; web/.npmrc skips
# onnxruntime-node's install script, which would fetch CUDA binaries from outside the npm registry).
if command -v npm >/dev/null; then
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi

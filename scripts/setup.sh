#!/usr/bin/env bash
# Create .venv with vitgender and every extra at the exact tested versions (requirements/lock.txt),
# and .venv-executorch for the ExecuTorch toolchain (it needs numpy >= 2, the main environment's
# TensorFlow stack numpy < 2; see vitgender/toolchains/side_env.py). Measured on the 2-core CI machine:
# 3 min 18 s (time bash scripts/setup.sh), 7.1 GB (.venv 4.9 GB, .venv-executorch 1.6 GB, web/node_modules 627 MB).
# The lock names the CPU build of torch (torch==2.13.0+cpu): pip finds it through --find-links or
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu (PyPI's own Linux wheel is the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || { echo "setup.sh: needs $PYTHON (pyproject.toml: requires-python >=3.11,<3.12); install Python 3.11 or set PYTHON=/path/to/python3.11" >&2; exit 2; }
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -c requirements/lock.txt -e ".[all]"
"$PYTHON" -m venv .venv-executorch
.venv-executorch/bin/python -m pip install -q -r requirements/executorch.txt
# The JS toolchain for the web tests and demo (pinned in web/package-lock.json; web/.npmrc skips
# onnxruntime-node's install script, which would fetch CUDA binaries from outside the npm registry).
if command -v npm >/dev/null; then
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi

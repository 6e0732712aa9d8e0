#!/usr/bin/env bash
# Regenerate requirements/lock.txt, the exact set the test suite runs on: every extra of
# pyproject.toml resolved for Python 3.11 with the CPU build of torch. uv keeps the versions
# already in the lock unless a range in pyproject.toml excludes them; pass --upgrade to move on.
# Needs uv (pip install uv) and the torch CPU wheel where --find-links points (default /opt/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null || { echo "lock.sh: needs uv on PATH (pip install uv)" >&2; exit 2; }
uv pip compile pyproject.toml --all-extras --python-version 3.11 \
  --find-links "${TORCH_FIND_LINKS:-/opt/wheels}" -c requirements/torch-cpu.txt \
  -o requirements/lock.txt "$@"

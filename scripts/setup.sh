#!/usr/bin/env bash
# Create .venv and install vitgender with every extra. torch is pinned in pyproject.toml
# (an unpinned torch pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q -e ".[all]"

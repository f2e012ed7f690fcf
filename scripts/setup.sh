#!/usr/bin/env bash
# Create .venv and install Aletheia with the pinned CPU stack (idempotent; fast when done before).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements/cpu.txt
.venv/bin/python -m pip install -q --no-deps -e .

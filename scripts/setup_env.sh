#!/usr/bin/env bash
# Make .venv (or $VENV) with torch first, then requirements.txt. Safe to run again: it only
# installs what is missing. Set TORCH_SPEC to pick another torch build (e.g. a CUDA 12 one).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# torch before the rest: otherwise pip resolves `torch` itself and may pull a multi-GB CUDA build.
# TORCH_SPEC may hold pip options too (e.g. "torch --index-url URL"): split it into words on purpose.
# shellcheck disable=SC2086
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q $TORCH_SPEC
"$VENV/bin/python" -m pip install -q -r requirements.txt
# This checkout itself, editable (no dependencies: they came above), so bench/, web/ and tests/ import the
# project's modules without sys.path edits.
# pyproject.toml lists the modules it maps: install again when it changed.
if [ ! -f "$VENV/.editable_install" ] || [ pyproject.toml -nt "$VENV/.editable_install" ]; then
  "$VENV/bin/python" -m pip install -q --no-deps -e . && touch "$VENV/.editable_install"
fi
"$VENV/bin/python" -m pip check
# The web page's npm packages and face detector (web/); where npm is missing it says so and goes on.
VENV="$VENV" bash scripts/setup_web.sh
echo "environment ready: $VENV"

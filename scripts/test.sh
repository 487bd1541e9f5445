#!/usr/bin/env bash
# The test command: set up the environment if needed, lint, then the CPU test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# The phone converters' own environment (.venv-mobile: numpy 2 and protobuf 7, which mediapipe cannot share):
# tests/test_phone_export.py converts to LiteRT and Core ML in it.
bash scripts/setup_mobile.sh
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/python" -m pytest -q "$@"

#!/usr/bin/env bash
# The first command of the README: set everything up (.venv, torch first, then requirements.txt)
# and run the whole pipeline on the bundled samples, on CPU, under runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${VENV:-.venv}
"$VENV/bin/python" run_demo.py "$@"

#!/usr/bin/env bash
# Make .venv (or $VENV) with torch first, then requirements.txt. Safe to run again: it only
# installs what is missing. Set TORCH_SPEC to pick another torch build (e.g. a CUDA 12 one).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
source scripts/venv_with_torch.sh
venv_with_torch "$VENV" requirements.txt
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

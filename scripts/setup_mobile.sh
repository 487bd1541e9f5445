#!/usr/bin/env bash
# Make .venv-mobile (or $MOBILE_VENV): the phone converters for `tinybeauty_export.py --format tflite,coreml`.
# Its own environment because litert-torch and coremltools pull numpy 2 and protobuf 7, which break mediapipe in
# .venv (docs/decisions.md#mobile-environment). Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MOBILE_VENV:-.venv-mobile}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# torch before the rest, as in setup_env.sh: otherwise pip may pull a multi-GB CUDA build.
# shellcheck disable=SC2086
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q $TORCH_SPEC
"$VENV/bin/python" -m pip install -q -r requirements-mobile.txt
"$VENV/bin/python" -m pip check
echo "phone converters ready: $VENV (tinybeauty_export.py --format onnx,tflite,coreml finds it)"

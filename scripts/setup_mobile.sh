#!/usr/bin/env bash
# Make .venv-mobile (or $MOBILE_VENV): the phone converters for `tinybeauty_export.py --format tflite,coreml`.
# Its own environment because litert-torch and coremltools pull numpy 2 and protobuf 7, which break mediapipe in
# .venv (docs/decisions.md#mobile-environment). Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MOBILE_VENV:-.venv-mobile}
source scripts/venv_with_torch.sh
venv_with_torch "$VENV" requirements-mobile.txt
"$VENV/bin/python" -m pip check
echo "phone converters ready: $VENV (tinybeauty_export.py --format onnx,tflite,coreml finds it)"

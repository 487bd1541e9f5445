#!/usr/bin/env bash
# The web page's (web/) dependencies: onnxruntime-web and MediaPipe Tasks from the npm registry, at
# the versions in web/package-lock.json, and the face detector copied out of the mediapipe wheel that
# requirements.txt installs (so the page loads nothing from a CDN). Safe to run again. Without npm it
# says so and stops: the page cannot run and tests/test_web.py skips (apt-get install nodejs npm).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if ! command -v npm >/dev/null; then
  echo "web/: npm not found: its packages are not installed, the browser test will skip (apt-get install nodejs npm)"
  exit 0
fi
# npm writes node_modules/.package-lock.json on install: newer than the lock file means up to date.
if [ ! web/node_modules/.package-lock.json -nt web/package-lock.json ]; then
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi
mkdir -p web/models
"$VENV/bin/python" - <<'PY'
import importlib.util
import shutil
from pathlib import Path

# Located, not imported: importing mediapipe takes seconds.
wheel = Path(importlib.util.find_spec("mediapipe").origin).parent
source = wheel / "modules/face_detection/face_detection_short_range.tflite"
target = Path("web/models") / source.name
if not target.is_file() or target.stat().st_size != source.stat().st_size:
    shutil.copyfile(source, target)
PY
echo "web/ ready: node_modules and models/face_detection_short_range.tflite"

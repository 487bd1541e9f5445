"""The phone converters' own environment, seen from the main one: find it, run deploy/mobile_export.py in it.

litert-torch, ai-edge-quantizer and coremltools need numpy 2 and protobuf 7; mediapipe 0.10.21 (the face
landmarks every stage uses) needs numpy < 2 and protobuf 4. So they live in .venv-mobile, made by
`bash scripts/setup_mobile.sh` (why: docs/decisions.md#mobile-environment), and tinybeauty_export.py hands them
the checkpoint and its faces through a folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from common import REPO_ROOT
from errors import InputError

PHONE_FORMATS = ("tflite", "coreml")
MOBILE_ENV = "TINYBEAUTY_MOBILE_PYTHON"  # a python with the converters, instead of .venv-mobile's
DEFAULT_MOBILE_PYTHON = REPO_ROOT / ".venv-mobile" / "bin" / "python"


def mobile_python() -> Path:
    """The phone environment's python, or an InputError that says how to make it."""
    python = Path(os.environ.get(MOBILE_ENV) or DEFAULT_MOBILE_PYTHON)
    if not python.is_file():
        raise InputError(f"the phone converters' environment is missing ({python}): run `bash scripts/setup_mobile.sh` "
                         f"once (about a minute; it keeps the main .venv as it is), or set ${MOBILE_ENV}")  # fmt: skip
    return python


def export_phone(python: Path, checkpoint: Path, output: Path, formats: list[str], calibration: np.ndarray,
                 sources: np.ndarray, targets: np.ndarray) -> dict:  # fmt: skip
    """Run deploy/mobile_export.py in `python` on these faces; its report (also in OUTPUT/mobile_report.json)."""
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output) as tmp:
        faces = Path(tmp) / "faces.npz"
        np.savez(faces, calibration=calibration, sources=sources, targets=targets)
        command = [str(python), "-m", "deploy.mobile_export", "--checkpoint", str(Path(checkpoint).resolve()),
                   "--faces", str(faces), "--out", str(output.resolve()), "--formats", ",".join(formats)]  # fmt: skip
        log_path = output / "mobile_export.log"  # the converters' own chatter, kept out of the terminal
        with open(log_path, "w") as log_file:
            done = subprocess.run(command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"phone export failed (exit {done.returncode}); {log_path} ends with:\n" + "\n".join(tail))
    return json.loads((output / "mobile_report.json").read_text())

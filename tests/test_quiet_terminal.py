"""A new user's terminal shows our own log lines, not third-party noise: MediaPipe's absl/glog start-up lines and
TF Lite's delegate line (common.native_noise_filtered, QuietNativeStart) and ONNX Runtime's warning about the
`intensity` initializer (deploy/onnx_export.ort_session)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO, SAMPLE_FACES

NOISE = ("W0000", "I0000", "Initializer intensity appears", "TensorFlow Lite XNNPACK delegate", "absl::InitializeLog")


def test_inference_with_a_style_prints_only_its_own_lines(tmp_path):
    """--style --full-photo on one bundled face, as its own process: detection (FaceDetection), the eye line
    (FaceMesh) and the style's ONNX all start, and none of their noise reaches stdout or stderr."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "CF3.jpg").symlink_to(SAMPLE_FACES / "CF3.jpg")
    command = [sys.executable, "tinybeauty_inference.py", "--style", "classic_red_lip", "--input",
               str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--full-photo"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-2000:]
    assert "1 image(s) written to" in printed and "1 face(s) in 1 photo(s)" in printed, printed
    assert not [noise for noise in NOISE if noise in printed], printed


def test_the_filter_drops_only_the_known_native_lines(capfd):
    """What reaches fd 2 inside native_noise_filtered: absl INFO/WARNING lines dropped, an absl ERROR line and
    anything else (a progress bar's carriage return too) written to stderr after it, unchanged."""
    from common import native_noise_filtered

    capfd.readouterr()
    with native_noise_filtered():
        os.write(2, b"W0000 00:00:1796678287.643368     708 inference_feedback_manager.cc:114] Feedback manager\n")
        os.write(2, b"I0000 00:00:1796678287.643368     708 gl_context.cc:369] GL version\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"E0000 00:00:1796678287.643368     708 graph.cc:1] a real error\n")
        os.write(2, b"progress  10%\rprogress 100%\n")
    err = capfd.readouterr().err
    assert err == "E0000 00:00:1796678287.643368     708 graph.cc:1] a real error\nprogress  10%\rprogress 100%\n", err

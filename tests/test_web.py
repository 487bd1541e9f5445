"""The web page (web/) in a real browser: headless Chromium against ONNX Runtime in Python.

    python -m pytest -q tests/test_web.py

A sample face goes in through the page's file input; the page's canvases are read back and checked
against ONNX Runtime in Python on the crop the page fed its model, and against data/face_align.py's
paste-back. Needs Chromium (Debian's `chromium`) and web/'s npm packages (scripts/setup_web.sh):
without them every test here is skipped with the reason ("browser test skipped: ..."), except under
CI (CI=true), where it fails instead, since .ci/run installs both.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.conftest import SAMPLE_FACES
from web import page_driver

pytestmark = pytest.mark.slow  # trains a model, runs the stages or drives a browser

FACE = SAMPLE_FACES / "AF1.jpg"
MAX_DIFF = 2  # grey levels: 2/255, onnxruntime-web's WASM kernels against ORT's CPU ones


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    """The page served with an int8 stand-in model, open in headless Chromium with a fake webcam."""
    reason = page_driver.missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {reason}")
        pytest.skip(f"browser test skipped: {reason}")
    tmp = tmp_path_factory.mktemp("web")
    int8 = page_driver.stand_in_model(tmp / "export")
    webcam = page_driver.fake_webcam_video(FACE, tmp / "webcam.y4m")
    with page_driver.serve([int8], tmp / "serve.log") as url, page_driver.chromium(webcam) as browser:
        page = page_driver.open_page(browser, url)
        yield page, int8


@pytest.fixture(scope="module")
def uploaded(browser_page):
    """The sample face through the page at intensity 1: (page, int8 path, state.last, canvases)."""
    page, int8 = browser_page
    last = page_driver.upload(page, FACE)
    canvases = {name: page_driver.read_canvas(page, name) for name in ("before", "after", "crop-before", "crop-after")}
    return page, int8, last, canvases


def python_makeup(int8, crop: np.ndarray, intensity: float | None = None) -> np.ndarray:
    """ONNX Runtime in Python on an (S, S, 3) uint8 crop -> (S, S, 3) uint8, as tinybeauty_inference."""
    from common import from_uint8, to_uint8
    from deploy.onnx_export import ort_run, ort_session

    source = from_uint8(crop)[None].numpy()
    return to_uint8(torch.from_numpy(ort_run(ort_session(int8), source, intensity=intensity))[0])


def test_page_output_matches_onnxruntime_on_the_same_crop(uploaded, tmp_path):
    page, int8, last, canvases = uploaded
    assert last["source"] == f"upload:{FACE.name}" and len(last["faces"]) == 1
    crop, made = canvases["crop-before"], canvases["crop-after"]
    assert crop.shape == made.shape == (256, 256, 3)
    expected = python_makeup(int8, crop)
    diff = np.abs(made.astype(int) - expected.astype(int))
    assert diff.max() <= MAX_DIFF, f"page vs ONNX Runtime: max {diff.max()} grey levels"
    assert np.abs(expected.astype(int) - crop).mean() > 5  # the stand-in model does change the face

    page.screenshot(path=str(tmp_path / "web_page.png"))
    assert (tmp_path / "web_page.png").stat().st_size > 10_000
    print(f"screenshot: {tmp_path / 'web_page.png'}")


def test_page_frames_and_pastes_back_as_photo_mode(uploaded):
    """The crop is the one data/face_align.py's affine gives, and the full frame is FaceAligner.paste_back
    of the model's change: only the face's square moves, the rest of the photo comes back exactly."""
    from data.face_align import AlignedFace, FaceAligner

    _, int8, last, canvases = uploaded
    before, after, crop = canvases["before"], canvases["after"], canvases["crop-before"]
    assert before.shape == (last["height"], last["width"], 3) == after.shape
    face = last["faces"][0]
    matrix = np.array(face["matrix"], np.float64).reshape(2, 3)
    aligner = FaceAligner(size=256)
    # The page's affine is FaceAligner.crop_matrix of its box (grown by the margin) and eye angle ...
    x0, y0, x1, y1 = face["box"]
    expected_matrix = aligner.crop_matrix(
        np.array([x0 + x1, y0 + y1]) / 2, (x1 - x0) * (1 + 2 * aligner.margin), face["angle"]
    )
    np.testing.assert_allclose(matrix, expected_matrix, atol=1e-6)
    # ... and its crop is cv2's through that affine, up to the canvas's own resampling filter (0.04 grey
    # levels on average here; a crop a pixel off would be several).
    assert np.abs(aligner.crop_with_matrix(matrix, before).astype(int) - crop).mean() < 1

    aligned = AlignedFace(crop=crop, matrix=matrix, box=tuple(int(v) for v in face["box"]))
    expected = aligner.paste_back(before, aligned, python_makeup(int8, crop))
    diff = np.abs(after.astype(int) - expected)
    assert diff.max() <= MAX_DIFF + 1, f"full frame vs paste_back: max {diff.max()}"  # + cv2's 1/32-pixel warp
    ys, xs = np.mgrid[: before.shape[0], : before.shape[1]]
    u, v = (matrix[i, 0] * xs + matrix[i, 1] * ys + matrix[i, 2] for i in (0, 1))  # crop coordinates
    outside = (u <= -1) | (v <= -1) | (u >= 256) | (v >= 256)
    assert outside.mean() > 0.1 and np.array_equal(after[outside], before[outside])
    assert (np.abs(after.astype(int) - before).max(-1) > 3).mean() > 0.2  # the face did change


def test_page_finds_the_face_python_finds(uploaded):
    """The page's detector (MediaPipe Tasks, short range) frames the face as data/face_align.py does."""
    from data.face_align import FaceAligner

    _, _, last, canvases = uploaded
    with FaceAligner(size=256) as aligner:
        (reference,) = aligner.detect(canvases["before"])
    box, ref = np.array(last["faces"][0]["box"]), np.array(reference.box, float)
    side = ref[2] - ref[0]
    # Short range and full range differ by up to ~0.05 x the side (centre) and ~0.1 (side) on the
    # sample faces once the page's correction is applied; AF1 is at 0.015 and 0.016.
    assert np.abs((box[:2] + box[2:]) / 2 - (ref[:2] + ref[2:]) / 2).max() < 0.05 * side
    assert abs((box[2] - box[0]) / side - 1) < 0.1
    assert abs(last["faces"][0]["angle"] - reference.angle) < 6  # the page levels with the detector's eyes


def test_intensity_zero_gives_the_photo_back_and_half_matches_onnxruntime(uploaded):
    page, int8, _, canvases = uploaded
    last = page_driver.set_intensity(page, 0)
    assert last["intensity"] == 0
    assert np.array_equal(page_driver.read_canvas(page, "after"), canvases["before"])
    assert np.array_equal(page_driver.read_canvas(page, "crop-after"), canvases["crop-before"])

    page_driver.set_intensity(page, 0.5)
    expected = python_makeup(int8, canvases["crop-before"], intensity=0.5)  # the ONNX's own intensity input
    assert np.abs(page_driver.read_canvas(page, "crop-after").astype(int) - expected).max() <= MAX_DIFF
    page_driver.set_intensity(page, 1)


def test_webcam_runs_frames_with_a_face(uploaded):
    """getUserMedia with Chromium's fake camera playing the sample face: frames keep coming, each with
    the face found, and the page shows its per-frame time."""
    page = uploaded[0]
    page.click("#webcam")
    page.wait_for_function("() => tinybeauty.state.error || tinybeauty.state.last.source === 'webcam'")
    first = page_driver.check(page)["runs"]
    page.wait_for_function(f"() => tinybeauty.state.error || tinybeauty.state.runs >= {first + 3}")
    last = page_driver.check(page)["last"]
    assert (last["width"], last["height"]) == (640, 480) and len(last["faces"]) == 1
    assert "median of the last" in page.inner_text("#timing")
    page.click("#webcam")  # stop
    assert page.inner_text("#webcam") == "Webcam"


def test_photo_without_a_face_comes_back_unchanged(uploaded, tmp_path):
    from PIL import Image

    page = uploaded[0]
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(100, 160, (120, 200, 3), dtype=np.uint8)).save(tmp_path / "noface.png")
    last = page_driver.upload(page, tmp_path / "noface.png")
    assert last["faces"] == [] and "0 faces found" in page.inner_text("#status")
    assert np.array_equal(page_driver.read_canvas(page, "after"), page_driver.read_canvas(page, "before"))

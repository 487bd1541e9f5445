"""Face alignment: detection on photos of any size, exact paste-back, and the full-photo mode."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from common import from_uint8, psnr
from data.face_align import FaceAligner, feather_mask, process_full_photo
from data.io import read_rgb
from tests.conftest import REPO, SAMPLE_FACES


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(psnr(from_uint8(a)[None], from_uint8(b)[None]))


@pytest.fixture(scope="module")
def two_faces() -> np.ndarray:
    canvas = np.full((420, 900, 3), 90, np.uint8)
    canvas[20:370, 20:370] = read_rgb(SAMPLE_FACES / "AF1.jpg")
    canvas[50:400, 520:870] = read_rgb(SAMPLE_FACES / "CM10.jpg")
    return canvas


@pytest.fixture(scope="module")
def aligner():
    with FaceAligner(size=256) as a:
        yield a


def test_detects_both_faces_with_level_eyes(aligner, two_faces):
    faces = aligner.detect(two_faces)
    assert len(faces) == 2
    centres = sorted((f.box[0] + f.box[2]) / 2 for f in faces)
    assert centres[0] < 370 < 520 < centres[1]
    for face in faces:
        assert face.crop.shape == (256, 256, 3) and face.matrix.shape == (2, 3)


def test_rotated_face_is_levelled():
    photo = read_rgb(SAMPLE_FACES / "CF3.jpg")
    import cv2

    tilted = cv2.warpAffine(
        photo, cv2.getRotationMatrix2D((175, 175), 20, 1.0), (350, 350), borderMode=cv2.BORDER_REFLECT
    )
    with FaceAligner(size=128) as a:
        (upright,) = a.detect(photo)
        (levelled,) = a.detect(tilted)
    assert abs((levelled.angle - upright.angle) - (-20)) < 5  # the aligner undoes the tilt


def test_round_trip_is_exact_and_replace_mode_is_close(aligner, two_faces):
    for face in aligner.detect(two_faces):
        assert _psnr(aligner.paste_back(two_faces, face, face.crop), two_faces) >= 40
        assert _psnr(aligner.paste_back(two_faces, face, face.crop, mode="replace"), two_faces) >= 35


def test_large_photo_round_trip():
    photo = np.asarray(
        __import__("PIL.Image", fromlist=["Image"]).fromarray(read_rgb(SAMPLE_FACES / "AM2.jpg")).resize((1400, 1400))
    )
    with FaceAligner(size=128) as a:
        out, n = process_full_photo(photo, lambda crop: crop, a)
    assert n == 1 and _psnr(out, photo) >= 40


def test_change_lands_on_each_face_only(aligner, two_faces):
    out, n = process_full_photo(
        two_faces, lambda crop: np.clip(crop.astype(int) + 40, 0, 255).astype(np.uint8), aligner
    )
    assert n == 2
    changed = np.abs(out.astype(int) - two_faces).sum(-1) > 0
    assert changed[100:300, 100:300].mean() > 0.9 and changed[150:350, 600:800].mean() > 0.9
    assert not changed[:, 440:460].any()  # the gap between the two photos is untouched


def test_photo_without_a_face_is_unchanged(aligner):
    blank = np.random.default_rng(0).integers(0, 255, (240, 320, 3)).astype(np.uint8)
    out, n = process_full_photo(blank, lambda crop: 255 - crop, aligner)
    assert n == 0 and np.array_equal(out, blank)


def test_feather_mask_edges():
    mask = feather_mask(64, 0.1)
    assert mask[32, 32] == 1.0 and mask[0, 32] < 0.05 and mask[32, 63] < 0.05


@pytest.mark.slow
def test_inference_full_photo_cli(tmp_path, two_faces):
    """tinybeauty_inference.py --full-photo on a two-face photo and a photo with no face."""
    from PIL import Image

    from models.tinybeauty import TinyBeauty

    model = TinyBeauty(widths=[8, 16], bottleneck=16)
    ckpt = tmp_path / "tiny.pt"
    torch.save(
        {"arch": "tinybeauty", "model_kwargs": {"widths": [8, 16], "bottleneck": 16}, "model": model.state_dict(),
         "config": {"data": {"size": 64}}},
        ckpt,
    )  # fmt: skip
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(two_faces).save(photos / "two.png")
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(photos / "none.png")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "tinybeauty_inference.py"), "--checkpoint", str(ckpt), "--input", str(photos),
         "--output", str(out), "--full-photo", "--device", "cpu"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["faces"] == 2 and summary["written"] == 2
    assert [p.endswith("none.png") for p in summary["photos_without_face"]] == [True]
    assert np.array_equal(read_rgb(out / "none.png"), np.full((200, 300, 3), 128, np.uint8))
    assert read_rgb(out / "two.png").shape == two_faces.shape

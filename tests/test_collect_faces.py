"""collect_faces.py: a folder of photos -> plain aligned faces, each rejection with its reason, resumable."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import collect_faces
from common import atomic_save_image
from data.amplify_manifest import plan_jobs
from data.face_align import FaceAligner
from data.face_parsing import FaceParser
from data.face_quality import hamming, hash_array, head_pose, perceptual_hash, sharpness
from data.io import list_images, read_rgb
from errors import InputError
from tests.conftest import REPO, SAMPLE_FACES

KEPT = {"a_good.png", "party__group_f0.png", "party__group_f1.png"}
REJECTED = {"b_copy.jpg": "duplicate", "c_blurry.jpg": "blurry", "e_turned.jpg": "turned",
            "f_notes.jpg": "not_an_image", "g_plain.png": "no_face"}  # fmt: skip


def turned(photo: np.ndarray, degrees: float = 60, focal: float = 0.4) -> np.ndarray:
    """The photo as a flat card turned `degrees` about its vertical axis before a pinhole camera (focal x width)."""
    h, w = photo.shape[:2]
    corners = np.array([[-w / 2, -h / 2, 0], [w / 2, -h / 2, 0], [w / 2, h / 2, 0], [-w / 2, h / 2, 0]])
    t = np.radians(degrees)
    rotated = corners @ np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]]).T
    rotated[:, 2] += focal * w
    seen = rotated[:, :2] * (focal * w) / rotated[:, 2:3] + [w / 2, h / 2]
    matrix = cv2.getPerspectiveTransform((corners[:, :2] + [w / 2, h / 2]).astype(np.float32), seen.astype(np.float32))
    return cv2.warpPerspective(photo, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)


def resized_copy(photo: np.ndarray, scale: float = 0.7, quality: int = 70) -> bytes:
    small = Image.fromarray(photo).resize([int(s * scale) for s in photo.shape[1::-1]], Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    good = read_rgb(SAMPLE_FACES / "AF12.jpg")
    atomic_save_image(good, folder / "a_good.png")
    (folder / "b_copy.jpg").write_bytes(resized_copy(good))
    atomic_save_image(cv2.GaussianBlur(good, (0, 0), 3), folder / "c_blurry.jpg")
    group = np.full((380, 760, 3), 120, np.uint8)  # two faces side by side, in a subfolder
    group[15:365, 15:365], group[15:365, 395:745] = (
        read_rgb(SAMPLE_FACES / "CM21.jpg"),
        read_rgb(SAMPLE_FACES / "AF25.jpg"),
    )
    atomic_save_image(group, folder / "party" / "group.jpg")
    atomic_save_image(turned(read_rgb(SAMPLE_FACES / "AF1.jpg")), folder / "e_turned.jpg")
    (folder / "f_notes.jpg").write_text("not a photo\n")
    gradient = np.linspace(0, 255, 300 * 300 * 3).reshape(300, 300, 3).astype(np.uint8)
    atomic_save_image(gradient, folder / "g_plain.png")
    (folder / "readme.txt").write_text("no image suffix: not listed")
    return folder


@pytest.fixture(scope="module")
def collected(photos, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("collected") / "faces"
    return out, collect_faces.main(["--input", str(photos), "--output", str(out), "--save-rejected"])


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / collect_faces.MANIFEST).read_text().splitlines()]


def test_keeps_the_good_and_the_group_faces_and_names_each_rejection(collected):
    out, summary = collected
    assert {p.name for p in list_images(out)} == KEPT
    assert all(read_rgb(out / name).shape == (256, 256, 3) for name in KEPT)
    records = manifest(out)
    reasons = {r["input"]: r["reason"] for r in records if not r["kept"]}
    assert reasons == REJECTED
    assert {r["output"] for r in records if r["kept"]} == KEPT
    by_input = {r["input"]: r for r in records}
    assert by_input["b_copy.jpg"]["duplicate_of"] == "a_good.png"
    assert abs(by_input["e_turned.jpg"]["yaw"]) > 25  # MediaPipe reads the turned card as turned
    assert abs(by_input["a_good.png"]["yaw"]) < 10 and abs(by_input["a_good.png"]["roll"]) < 2
    assert summary["kept"] == 3 and summary["photos"] == 7 and summary["faces_found"] == 6
    assert summary["rejected_by_reason"] == {reason: 1 for reason in REJECTED.values()}
    assert json.loads((out / "summary.json").read_text()) == summary
    assert {p.parent.name for p in (out / "rejected").rglob("*.png")} == {"duplicate", "blurry", "turned"}


def test_stage_three_and_make_style_read_the_folder_as_it_is(collected):
    """make_style.py --faces and dda_amplify.py input_dir= list images directly in the folder: the faces only."""
    out, _ = collected
    assert {job.input.name for job in plan_jobs(out, None, 1, 0)} == KEPT
    with FaceAligner(size=256) as aligner:  # a kept face is found again, framed the same
        face = aligner.detect(read_rgb(out / "a_good.png"))[0]
    assert abs(face.angle) < 2 and 0.5 < (face.box[2] - face.box[0]) / (256 / 1.8) < 1.3


def test_a_rerun_judges_nothing_and_changes_nothing(collected, photos):
    out, first = collected
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "summary.json"}
    again = collect_faces.main(["--input", str(photos), "--output", str(out)])
    assert again["this_run"]["photos"] == 0
    assert {k: again[k] for k in ("kept", "rejected_by_reason")} == {
        k: first[k] for k in ("kept", "rejected_by_reason")
    }
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "summary.json"} == before


def test_a_photo_cut_short_by_a_kill_is_judged_again(collected, photos, tmp_path):
    out = tmp_path / "faces"
    lines = (collected[0] / collect_faces.MANIFEST).read_text().splitlines()
    out.mkdir()
    (out / collect_faces.SETTINGS).write_text((collected[0] / collect_faces.SETTINGS).read_text())
    group_first = next(line for line in lines if '"face": 0' in line and "group" in line)
    (out / collect_faces.MANIFEST).write_text(group_first + "\n" + lines[0][:20])  # one of two faces, a torn line
    summary = collect_faces.main(["--input", str(photos), "--output", str(out)])
    assert summary["this_run"]["photos"] == 7  # the group photo too: its second line was missing
    assert {p.name for p in list_images(out)} == KEPT


def test_other_filters_on_the_same_folder_are_refused(collected, photos):
    with pytest.raises(InputError, match="max_yaw"):
        collect_faces.main(["--input", str(photos), "--output", str(collected[0]), "--max-yaw", "40"])


def test_group_reject_rejects_the_photo(photos, tmp_path):
    out = tmp_path / "faces"
    summary = collect_faces.main(["--input", str(photos), "--output", str(out), "--group", "reject"])
    reasons = {r["input"]: r["reason"] for r in manifest(out)}
    assert reasons["party/group.jpg"] == "several_faces" and summary["kept"] == 1


def test_no_usable_face_is_an_error_and_leaves_nothing(photos, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("f_notes.jpg", "g_plain.png", "c_blurry.jpg"):
        (bad / name).write_bytes((photos / name).read_bytes())
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "collect_faces.py", "--input", str(bad), "--output", str(out)],
                            cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"no usable face in {bad}" in result.stderr and "blurry 1" in result.stderr
    assert "not_an_image 1" in result.stderr and "no_face 1" in result.stderr
    assert not out.exists()


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(InputError, match=f"photo folder not found: {tmp_path / 'nowhere'}"):
        collect_faces.main(["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")])


def test_quality_measures():
    face = read_rgb(SAMPLE_FACES / "CF38.jpg")
    with FaceAligner(size=256) as aligner, FaceParser(max_num_faces=2) as parser:
        crops = [
            aligner.detect(photo)[0].crop
            for photo in (face, np.asarray(Image.open(io.BytesIO(resized_copy(face, 0.6, 60))).convert("RGB")))
        ]
        other = aligner.detect(read_rgb(SAMPLE_FACES / "CF27.jpg"))[0].crop
        marks = [parser.landmarks(crop, depth=True)[0] for crop in (*crops, other)]
    hashes = hash_array([perceptual_hash(crop, mark) for crop, mark in zip((*crops, other), marks)])
    copy_bits, other_bits = hamming(hashes[0].tobytes().hex(), hashes[1:])
    assert copy_bits <= 12 < other_bits
    assert sharpness(cv2.GaussianBlur(crops[0], (0, 0), 2)) < sharpness(crops[0]) / 3
    assert marks[0].shape == (478, 3) and all(abs(angle) < 10 for angle in head_pose(marks[0]))

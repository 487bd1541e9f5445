"""tinybeauty_video.py on short synthetic clips: a sample face moved by known similarities (bench/video_bench.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from bench.video_bench import (
    FAST,
    PHOTO,
    changes_in_photo_pose,
    codec_round_trip,
    crop_jitter,
    face_clip,
    frame_to_frame,
    made_up_frames,
    write_clip,
)
from common import run_cli
from tinybeauty_video import (
    DEFAULT_CONFIG,
    MakeupModel,
    OneEuroFilter,
    VideoReadError,
    main,
    paste_change,
)


@pytest.fixture(scope="module")
def stand_in_onnx(tmp_path_factory):
    """An untrained TinyBeauty with a strong random output head (a change of ~20 grey levels that follows the
    face's features, as makeup does), exported as tinybeauty_export.py does (fp32)."""
    from models.tinybeauty import TinyBeauty
    from tinybeauty_export import export_onnx

    torch.manual_seed(0)
    model = TinyBeauty().eval()
    with torch.no_grad():
        model.head.weight.normal_(0.0, 1.0)
    return export_onnx(model, tmp_path_factory.mktemp("model") / "tinybeauty_fp32.onnx", 256)


def read_video(path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    fps, frames = capture.get(cv2.CAP_PROP_FPS), []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    capture.release()
    return frames, fps


def test_frame_count_size_and_fps_are_kept_and_only_the_face_changes(stand_in_onnx, tmp_path):
    frames, poses, photo = face_clip(PHOTO, 480, 360, 12, 0)
    source = write_clip(frames, tmp_path / "in.avi", fps=29.97, codec="FFV1")  # lossless: exact comparisons
    for suffix in (".mkv", ".mp4"):
        output = tmp_path / f"out{suffix}"
        summary = main(["--model", str(stand_in_onnx), "--input", str(source), "--output", str(output)])
        written, fps = read_video(output)
        assert len(written) == summary["frames"] == 12 and summary["complete"]
        assert written[0].shape == frames[0].shape and fps == pytest.approx(29.97, abs=1e-3)
        assert summary["frames_with_face"] == 12 and summary["faces_found"] == 1
    assert not list(tmp_path.glob(".*"))  # no partial file left behind
    # FFV1 is lossless: far from the face (outside the crop) every pixel is the input's; on the face, makeup.
    face = np.zeros(frames[0].shape[:2], np.uint8)
    cv2.fillConvexPoly(face, cv2.transform(np.array([[[0, 0], [216, 0], [216, 216], [0, 216]]], np.float32),
                                           poses[0])[0].astype(np.int32), 1)  # fmt: skip
    far = cv2.dilate(face, np.ones((121, 121), np.uint8)) == 0
    for before, after in zip(frames, read_video(tmp_path / "out.mkv")[0]):
        assert np.array_equal(before[far], after[far])
        assert np.abs(before[face > 0].astype(int) - after[face > 0]).mean() > 3


def test_a_clip_without_a_face_comes_out_unchanged(stand_in_onnx, tmp_path):
    rng = np.random.default_rng(0)
    backdrop = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (320, 240), interpolation=cv2.INTER_CUBIC)
    frames = [np.roll(backdrop, 3 * i, axis=1) for i in range(8)]
    source = write_clip(frames, tmp_path / "empty.avi", codec="FFV1")
    summary = main(["--model", str(stand_in_onnx), "--input", str(source), "--output", str(tmp_path / "out.mkv")])
    written, _ = read_video(tmp_path / "out.mkv")
    assert summary["frames_with_face"] == 0 and summary["faces_found"] == 0 and summary["detections"] == 8
    assert len(written) == 8 and all(np.array_equal(a, b) for a, b in zip(frames, written))


def test_the_largest_face_by_default_and_each_face_with_max_faces(stand_in_onnx, tmp_path):
    from bench.video_bench import background
    from data.io import read_rgb

    left, right = (cv2.cvtColor(read_rgb(PHOTO.parent / name), cv2.COLOR_RGB2BGR) for name in ("AF1.jpg", "AM2.jpg"))
    frame = background(960, 540)
    frame[90:390, 60:360] = cv2.resize(left, (300, 300))  # the larger face
    frame[180:420, 620:860] = cv2.resize(right, (240, 240))
    source = write_clip([frame] * 6, tmp_path / "two.avi", codec="FFV1")
    for max_faces, changed_halves in ((1, [True, False]), (2, [True, True])):
        output = tmp_path / f"out{max_faces}.mkv"
        summary = main(["--model", str(stand_in_onnx), "--input", str(source), "--output", str(output),
                        f"max_faces={max_faces}"])  # fmt: skip
        assert summary["faces_found"] == max_faces and summary["frames_with_face"] == 6
        change = np.abs(read_video(output)[0][-1].astype(int) - frame).max(2) > 3
        assert [change[:, :480].any(), change[:, 480:].any()] == changed_halves


def test_smoothing_steadies_the_makeup_on_a_slowly_moving_face(stand_in_onnx):
    """Camera noise and the mp4v codec make the landmarks jitter; the One-Euro filter must take most of that
    out of the crop, and the makeup's change must vary less from frame to frame."""
    from common import load_config
    from data.face_parsing import FaceParser

    frames, poses, photo = face_clip(PHOTO, 1280, 720, 30, 0, noise=2.0)
    frames = codec_round_trip(frames)
    with FaceParser(max_num_faces=1) as parser:
        regions = parser.parse(cv2.cvtColor(photo, cv2.COLOR_BGR2RGB)).makeup
    lips_and_eyes = (regions == 1) | (regions == 2)
    centres = np.array([np.argwhere(regions == k).mean(0)[::-1] for k in (1, 2)])
    cfg = load_config(DEFAULT_CONFIG)
    model = MakeupModel(stand_in_onnx)
    figures = {}
    for mode in ("smoothed", "unsmoothed"):
        outputs, matrices = made_up_frames(frames, model, mode, cfg)
        changes = changes_in_photo_pose(frames, outputs, poses, photo.shape[0])
        figures[mode] = (frame_to_frame(changes, lips_and_eyes)["grey_levels"],
                         crop_jitter(matrices, poses, centres)["frame_to_frame_px"])  # fmt: skip
    (change_on, jitter_on), (change_off, jitter_off) = figures["smoothed"], figures["unsmoothed"]
    assert jitter_on < 0.7 * jitter_off, figures
    assert change_on < change_off, figures


def test_a_truncated_video_gives_the_message_and_a_valid_partial_output(stand_in_onnx, tmp_path, capsys):
    frames, _, _ = face_clip(PHOTO, 320, 240, 16, 0)
    whole = write_clip(frames, tmp_path / "whole.avi", codec="MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    output = tmp_path / "out.avi"
    status = run_cli(main, ["--model", str(stand_in_onnx), "--input", str(cut), "--output", str(output)])
    message = capsys.readouterr().err
    assert status == 2 and message.startswith("error: ")
    written, _ = read_video(output)
    assert 0 < len(written) < 16
    assert str(cut) in message and str(output) in message and "valid video" in message
    assert f"after frame {len(written)} of the 16" in message


def test_an_unreadable_video_is_named_and_nothing_is_written(stand_in_onnx, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    with pytest.raises(VideoReadError, match=f"cannot read video {bad}"):
        main(["--model", str(stand_in_onnx), "--input", str(bad), "--output", str(tmp_path / "out.mp4")])
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".*"))


def test_paste_change_is_photo_modes_residual_paste_back():
    """The feather applied before the warp (one warp) instead of after it (two): within one grey level."""
    from data.face_align import AlignedFace, FaceAligner, feather_mask

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    aligner = FaceAligner(size=256)
    matrix = aligner.crop_matrix(np.array([210.0, 140.0]), 180.0, 12.0)
    face = AlignedFace(crop=aligner.crop_with_matrix(matrix, photo), matrix=matrix, box=(0, 0, 1, 1))
    smooth = cv2.GaussianBlur(rng.normal(0, 1, (256, 256, 3)).astype(np.float32), (0, 0), 6)
    smooth *= 40 / np.abs(smooth).max()  # a makeup-like change: smooth, up to 40 grey levels
    new_crop = np.clip(face.crop + smooth, 0, 255).astype(np.uint8)
    expected = aligner.paste_back(photo, face, new_crop)
    pasted = photo.copy()
    paste_change(pasted, matrix, new_crop.astype(np.float32) - face.crop, feather_mask(256, 0.08))
    assert np.abs(pasted.astype(int) - expected).max() <= 1
    assert np.abs(pasted.astype(int) - photo).max() > 20


def test_one_euro_filter_is_still_on_a_still_signal_and_follows_a_fast_one():
    """configs/video.yaml's parameters; units of face widths, as the tracker's centre (0.002 ~ 0.5 crop pixel)."""
    still = OneEuroFilter(30.0, min_cutoff=1.0, beta=20.0, d_cutoff=3.0)
    noisy = 5.0 + np.random.default_rng(0).normal(0, 0.002, 60)
    out = np.array([still(np.array([x]))[0] for x in noisy])
    assert np.abs(np.diff(out[10:])).mean() < 0.3 * np.abs(np.diff(noisy[10:])).mean()
    fast = OneEuroFilter(30.0, min_cutoff=1.0, beta=20.0, d_cutoff=3.0)
    ramp = np.arange(FAST) * 0.05  # 1.5 units a second
    out = np.array([fast(np.array([x]))[0] for x in ramp])
    assert abs(out[-1] - ramp[-1]) < 0.05  # less than a frame behind

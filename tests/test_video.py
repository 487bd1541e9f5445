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
from common import load_config, run_cli
from data.face_tracking import OneEuroFilter, ResidualFilter, paste_change
from data.video_io import VideoReadError
from deploy.crop_model import MakeupModel
from deploy.video import VideoMakeup
from tinybeauty_video import DEFAULT_CONFIG, main


@pytest.fixture(scope="module")
def stand_in_model():
    """An untrained TinyBeauty with a strong random output head (a change of ~20 grey levels that follows the
    face's features, as makeup does)."""
    from models.tinybeauty import TinyBeauty

    torch.manual_seed(0)
    model = TinyBeauty().eval()
    with torch.no_grad():
        model.head.weight.normal_(0.0, 1.0)
    return model


@pytest.fixture(scope="module")
def stand_in_onnx(stand_in_model, tmp_path_factory):
    """The stand-in exported as tinybeauty_export.py does (fp32)."""
    from deploy.onnx_export import export_onnx

    return export_onnx(stand_in_model, tmp_path_factory.mktemp("model") / "tinybeauty_fp32.onnx", 256)


@pytest.fixture(scope="module")
def slow_camera_clip():
    """30 frames of the bench's slow drift at 720p with camera noise, through mp4v: (frames, poses, the photo as
    placed, its lips-and-eyes mask, the lip and eye centres)."""
    from data.face_parsing import FaceParser

    frames, poses, photo = face_clip(PHOTO, 1280, 720, 30, 0, noise=2.0)
    frames = codec_round_trip(frames)
    with FaceParser(max_num_faces=1) as parser:
        regions = parser.parse(cv2.cvtColor(photo, cv2.COLOR_BGR2RGB)).makeup
    centres = np.array([np.argwhere(regions == k).mean(0)[::-1] for k in (1, 2)])
    return frames, poses, photo, (regions == 1) | (regions == 2), centres


def read_video(path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    fps, frames = capture.get(cv2.CAP_PROP_FPS), []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    capture.release()
    return frames, fps


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_smoothing_steadies_the_makeup_on_a_slowly_moving_face(stand_in_onnx, slow_camera_clip):
    """Camera noise and the mp4v codec make the landmarks jitter; the One-Euro filter must take most of that
    out of the crop, and the makeup's change must vary less from frame to frame."""
    frames, poses, photo, lips_and_eyes, centres = slow_camera_clip
    cfg = load_config(DEFAULT_CONFIG)
    model = MakeupModel(stand_in_onnx)
    figures = {}
    for mode in ("transform_only", "unsmoothed"):
        outputs, matrices, _ = made_up_frames(frames, model, mode, cfg)
        changes = changes_in_photo_pose(frames, outputs, poses, photo.shape[0])
        figures[mode] = (frame_to_frame(changes, lips_and_eyes)["grey_levels"],
                         crop_jitter(matrices, poses, centres)["frame_to_frame_px"])  # fmt: skip
    (change_on, jitter_on), (change_off, jitter_off) = figures["transform_only"], figures["unsmoothed"]
    assert jitter_on < 0.7 * jitter_off, figures
    assert change_on < change_off, figures


@pytest.mark.slow
def test_the_residual_filter_steadies_the_makeup_further(stand_in_onnx, slow_camera_clip):
    """The stability figure (uint8 frames, and the pasted residual in float) with the residual filter on top of the
    transform smoothing is lower than with the transform smoothing alone; alone, lower than no smoothing."""
    from bench.video_bench import residuals_in_photo_pose
    from data.face_align import feather_mask

    frames, poses, photo, lips_and_eyes, _ = slow_camera_clip
    cfg = load_config(DEFAULT_CONFIG)
    model = MakeupModel(stand_in_onnx)
    feather = feather_mask(model.size, cfg.face.feather)
    figures = {}
    for mode in ("smoothed", "transform_only", "residual_only", "unsmoothed"):
        outputs, matrices, residuals = made_up_frames(frames, model, mode, cfg)
        changes = changes_in_photo_pose(frames, outputs, poses, photo.shape[0])
        floats = residuals_in_photo_pose(residuals, matrices, poses, photo.shape[0], feather)
        figures[mode] = (frame_to_frame(changes, lips_and_eyes)["grey_levels"],
                         frame_to_frame(floats, lips_and_eyes)["grey_levels"])  # fmt: skip
    for uint8_or_float in (0, 1):
        on, off = figures["smoothed"][uint8_or_float], figures["transform_only"][uint8_or_float]
        assert on < 0.9 * off, figures
        assert figures["residual_only"][uint8_or_float] < figures["unsmoothed"][uint8_or_float], figures


@pytest.mark.slow
def test_the_residual_filter_starts_afresh_on_a_new_face(stand_in_onnx):
    """A cut that moves the face far away loses its track; the face found again is a new track, and its first
    frame gets the model's raw residual, exactly as without the filter. Until then the filter is at work."""
    frames, _, _ = face_clip(PHOTO, 960, 360, 6, 0)
    shifted = [np.roll(frame, 350, axis=1) for frame in face_clip(PHOTO, 960, 360, 3, 0)[0]]
    clip = frames + shifted  # the face (216 px) jumps by 350 px, out of its crop, between frames 5 and 6
    model = MakeupModel(stand_in_onnx)
    outputs, keys = {}, []
    for residual_filter in (True, False):
        cfg = load_config(DEFAULT_CONFIG, [f"smoothing.residual.enabled={residual_filter}"])
        makeup, outputs[residual_filter] = VideoMakeup(model, cfg, fps=30.0), []
        for frame in clip:
            out = frame.copy()
            faces = makeup.track(out)
            makeup.apply(out, faces)
            outputs[residual_filter].append(out)
            keys += [[face.key for face in faces]] if residual_filter else []
        makeup.close()
    assert keys[:6] == [[0]] * 6 and keys[6:] == [[1]] * 3, keys
    same = [np.array_equal(a, b) for a, b in zip(outputs[True], outputs[False])]
    assert same[0] and same[6], same  # a new face: the raw residual
    assert not any(same[1:6]) and not any(same[7:]), same  # the same face: filtered


def test_the_residual_filter_blends_a_still_face_and_lets_motion_and_real_changes_through():
    """configs/video.yaml's parameters on a synthetic residual: flicker on a still crop is mostly removed; a fast
    moving crop, and a large change (a mouth that opens), come through almost unfiltered."""
    cfg = load_config(DEFAULT_CONFIG).smoothing.residual
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.normal(0, 1, (256, 256, 3)).astype(np.float32), (0, 0), 8) * 200
    still = np.eye(3)[:2] * 0.5 + [[0, 0, 100], [0, 0, 50]]  # frame -> crop, kept still
    flicker = ResidualFilter(30.0, cfg.min_cutoff, cfg.beta, cfg.gate, cfg.motion_cutoff)
    raw = [base + rng.normal(0, 1, base.shape).astype(np.float32) for _ in range(20)]
    out = [flicker(r, still) for r in raw]
    step = lambda frames: np.mean([np.abs(b - a).mean() for a, b in zip(frames[5:], frames[6:])])  # noqa: E731
    assert step(out) < 0.5 * step(raw)
    assert flicker.blend < 0.2
    changed = base.copy()
    changed[100:140, 100:160] += 60  # a large change in one place
    after = flicker(changed, still)
    assert np.abs(after - changed)[100:140, 100:160].mean() < 1  # let through
    assert np.abs(after - base)[:60].mean() < 1.5  # the rest stays filtered
    moving = ResidualFilter(30.0, cfg.min_cutoff, cfg.beta, cfg.gate, cfg.motion_cutoff)
    moving(base, still)
    fast = still + [[0, 0, 12], [0, 0, 0]]  # the crop moved by 12 crop pixels in a frame
    moving(base, fast)
    assert moving.blend > 0.8


def test_a_bad_residual_filter_setting_names_its_key(stand_in_onnx, tmp_path, capsys):
    source = write_clip(face_clip(PHOTO, 320, 240, 2, 0)[0], tmp_path / "in.avi", codec="MJPG")
    argv = ["--model", str(stand_in_onnx), "--input", str(source), "--output", str(tmp_path / "out.avi")]
    assert run_cli(main, [*argv, "smoothing.residual.min_cutoff=0"]) == 2
    assert "'smoothing.residual.min_cutoff' must be a number > 0" in capsys.readouterr().err
    assert not list(tmp_path.glob("*out*"))


@pytest.mark.slow
def test_a_pt_checkpoint_is_exported_to_onnx_on_the_fly(stand_in_model, stand_in_onnx, tmp_path):
    """--model tinybeauty_*.pt runs the checkpoint through ONNX Runtime (exported on the fly): the same video as
    its own ONNX export gives."""
    from common import save_checkpoint
    from models.tinybeauty import MODELS

    (arch,) = [name for name, cls in MODELS.items() if isinstance(stand_in_model, cls)]
    checkpoint = save_checkpoint({"arch": arch, "model_kwargs": {}, "model": stand_in_model.state_dict(),
                                  "config": {"data": {"size": 256}}}, tmp_path / "tinybeauty_best_psnr.pt")  # fmt: skip
    frames, _, _ = face_clip(PHOTO, 480, 360, 6, 0)
    source = write_clip(frames, tmp_path / "in.avi", codec="FFV1")
    written = {}
    for name, model in (("pt", checkpoint), ("onnx", stand_in_onnx)):
        output = tmp_path / f"out_{name}.mkv"
        summary = main(["--model", str(model), "--input", str(source), "--output", str(output)])
        assert summary["engine"] == "onnxruntime" and summary["frames_with_face"] == 6, summary
        written[name] = read_video(output)[0]
    assert len(written["pt"]) == 6
    assert max(np.abs(a.astype(int) - b).max() for a, b in zip(written["pt"], written["onnx"])) <= 1
    assert np.abs(written["pt"][-1].astype(int) - frames[-1]).max() > 10  # the makeup is there


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
    """min_cutoff 1 Hz (configs/video.yaml's before the residual filter took over part of the steadying; its 3 Hz
    is tested end to end above), beta 20, d_cutoff 3 Hz; units of face widths, as the tracker's centre (0.002 ~
    0.5 crop pixel)."""
    still = OneEuroFilter(30.0, min_cutoff=1.0, beta=20.0, d_cutoff=3.0)
    noisy = 5.0 + np.random.default_rng(0).normal(0, 0.002, 60)
    out = np.array([still(np.array([x]))[0] for x in noisy])
    assert np.abs(np.diff(out[10:])).mean() < 0.3 * np.abs(np.diff(noisy[10:])).mean()
    fast = OneEuroFilter(30.0, min_cutoff=1.0, beta=20.0, d_cutoff=3.0)
    ramp = np.arange(FAST) * 0.05  # 1.5 units a second
    out = np.array([fast(np.array([x]))[0] for x in ramp])
    assert abs(out[-1] - ramp[-1]) < 0.05  # less than a frame behind

"""TinyBeauty on video: end-to-end speed at 720p and 1080p, and how still the makeup sits on a moving face.

    python bench/video_bench.py --model export/tinybeauty_int8.onnx --model export/tinybeauty_fp32.onnx
    python bench/video_bench.py --model M --threads 1 --frames 120 --out /tmp/video_bench.json smoothing.d_cutoff=1

The clips are synthetic: a still face photo (data/samples/faces/AF1.jpg, scaled to 0.6x the frame height)
moved over a still background by known similarities (`clip_poses`): first slowly (a few pixels, degrees
and percent, as a head at rest drifts), then fast (up to ~27 px and 3 degrees a frame at 720p, 30 fps).
- speed: tinybeauty_video.process_video on an mp4v file of that clip (with camera noise) at 1280x720 and
  1920x1080: end-to-end fps (decode, track, TinyBeauty, paste-back, encode, with decoding, the model +
  paste-back and encoding in threads of their own beside the tracking, so the parts overlap), each part's
  own ms per frame (wall clock in its thread) and the CPU time per frame of the whole process. Each model
  (--model, repeatable) at each thread count (--threads); the median of --repeats runs.
- stability, on the slow part at 720p, frames in memory: each output's change (output - input) is warped
  back to the photo's own pose, and the mean |change(t) - change(t-1)| over the lips and the eye regions
  (grey levels; masks from data.face_parsing on the still photo) is the figure ("slow_part_change", on the
  uint8 frames as written). The same figure on the residual as pasted, in float, warped in one step from
  the crop to the photo's pose ("slow_part_change_float"): the frames' rounding to uint8 puts a floor under
  the uint8 figure that no filter removes, "constant_makeup_floor" (a makeup that does not change on the
  face at all, placed with the true pose). Runs (MODES): both smoothings (configs/video.yaml: the One-Euro
  filter on the crop transform and the residual filter), each one alone, none (smoothing.enabled=false:
  the same tracker, each landmark fit as measured, the raw residual), photo mode on every frame
  independently (FaceAligner.detect + paste_back, as tinybeauty_inference.py --full-photo), and the crop
  the known motion gives ("true_pose": what a perfect tracker would leave; resampling and noise make the
  change nonzero even then), also with the residual filter. Also the crop's own jitter: how far the
  photo's lip and eye centres move inside the model's 256 crop from frame to frame (pixels), and their lag
  (distance from the first frame's). Two clips: clean (rendered frames) and camera-like (Gaussian noise of
  std 2 grey levels, then through the mp4v encoder and decoder, as tinybeauty_video.py's own output).
- motion, on the fast part: does the makeup land on the lips and eyes? For each frame, of the pixels near
  the lips (the lip mask grown by 15% of its size), the |lips| ones the change moves most stand for where
  the lipstick went: their overlap with the lip mask, divided by the same overlap for photo mode on the
  still photo (the still-image case). The same for the eyes. Lag or a ghost: the mean |change - the still
  photo's change| over lips and eyes in each fast frame (mean and worst frame), and how much the residual
  filter alters the change there (both smoothings against the transform's alone, same crops).
Goals (issue 10): >= 30 fps end to end at 720p on 2 cores; frame-to-frame change with smoothing at most
half the unsmoothed run's (reported on the uint8 frames and on the float residual); lip overlap in the
fast part at least 0.9 of the still-image case. Writes the JSON to --out and prints it, with the load
average: the 2 cores are shared. `--modes` picks stability runs (e.g. to tune the filter).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from common import atomic_write_text, load_config, log, setup_logging
from data.face_align import FaceAligner, feather_mask
from data.face_parsing import FaceParser
from data.face_tracking import FaceCrop, compose
from data.io import read_rgb
from deploy.crop_model import MakeupModel
from deploy.video import VideoMakeup, process_video
from tinybeauty_video import DEFAULT_CONFIG

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "data/samples/faces/AF1.jpg"
SLOW, FAST = 60, 45  # frames of each part of the stability clip
LIPS, EYES = 2, 1  # data.face_parsing's makeup labels
# smoothed: configs/video.yaml (transform and residual smoothing); transform_only / residual_only: one of the two;
# unsmoothed: smoothing.enabled=false; photo_mode: every frame on its own; true_pose(_filtered): the crop from the
# known motion, without (with) the residual filter.
MODES = ("smoothed", "transform_only", "residual_only", "unsmoothed", "photo_mode", "true_pose", "true_pose_filtered")
SWITCHES = {  # mode -> (smoothing.enabled, smoothing.transform, smoothing.residual.enabled)
    "smoothed": (True, True, True),
    "transform_only": (True, True, False),
    "residual_only": (True, False, True),
    "unsmoothed": (False, True, True),
    "true_pose": (False, True, True),
    "true_pose_filtered": (True, False, True),
}


# --------------------------------------------------------------------------------------------
# The synthetic clip
# --------------------------------------------------------------------------------------------
def clip_poses(n_slow: int, n_fast: int, width: int, height: int, face_px: int) -> list[np.ndarray]:
    """(2, 3) affines photo (face_px x face_px) -> frame: a slow drift for n_slow frames, then a fast sway.

    Slow: +-6 / +-4 px, +-2 degrees, +-2% (periods of 40 to 61 frames: under 1 px a frame). Fast, on top:
    +-10% of the width, +-4% of the height, +-12 degrees, +-12% (periods of 24 to 36 frames)."""
    poses = []
    for t in range(n_slow + n_fast):
        dx, dy = 6 * math.sin(2 * math.pi * t / 40), 4 * math.sin(2 * math.pi * t / 53)
        angle, scale = 2 * math.sin(2 * math.pi * t / 47), 1 + 0.02 * math.sin(2 * math.pi * t / 61)
        if t >= n_slow:
            f = t - n_slow
            dx += 0.10 * width * math.sin(2 * math.pi * f / 30)
            dy += 0.04 * height * math.sin(2 * math.pi * f / 36)
            angle += 12 * math.sin(2 * math.pi * f / 24)
            scale *= 1 + 0.12 * math.sin(2 * math.pi * f / 32)
        centre = (face_px / 2, face_px / 2)
        pose = cv2.getRotationMatrix2D(centre, angle, scale)
        pose[:, 2] += [width / 2 + dx - centre[0], height / 2 + dy - centre[1]]
        poses.append(pose)
    return poses


def background(width: int, height: int) -> np.ndarray:
    """A still, softly textured BGR backdrop."""
    coarse = np.random.default_rng(0).integers(40, 200, (9, 16, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), (0, 0), 3)


def render(photo_bgr: np.ndarray, pose: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    frame = backdrop.copy()
    size = backdrop.shape[1::-1]
    cv2.warpAffine(photo_bgr, pose, size, dst=frame, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_TRANSPARENT)
    return frame


def face_clip(photo: Path, width: int, height: int, n_slow: int, n_fast: int, noise: float = 0.0, seed: int = 0):
    """(BGR frames, poses photo -> frame, the photo as placed: (face_px, face_px, 3) BGR, face_px = 0.6 x
    height). `noise`: the std (grey levels) of Gaussian noise drawn anew for each frame, as a camera's."""
    face_px = int(round(0.6 * height))
    photo_bgr = cv2.cvtColor(read_rgb(photo), cv2.COLOR_RGB2BGR)
    photo_bgr = cv2.resize(photo_bgr, (face_px, face_px), interpolation=cv2.INTER_CUBIC)
    poses = clip_poses(n_slow, n_fast, width, height, face_px)
    backdrop, rng, frames = background(width, height), np.random.default_rng(seed), []
    for pose in poses:
        frame = render(photo_bgr, pose, backdrop)
        if noise > 0:
            frame = np.clip(frame + noise * rng.standard_normal(frame.shape, np.float32), 0, 255).astype(np.uint8)
        frames.append(frame)
    return frames, poses, photo_bgr


def write_clip(frames: list[np.ndarray], path: Path, fps: float = 30.0, codec: str = "mp4v") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def codec_round_trip(frames: list[np.ndarray], codec: str = "mp4v") -> list[np.ndarray]:
    """The frames as a viewer sees them after OpenCV's encoder (at its default bitrate) and decoder."""
    with tempfile.TemporaryDirectory() as tmp:
        capture = cv2.VideoCapture(str(write_clip(frames, Path(tmp) / "clip.mp4", codec=codec)))
        decoded = []
        while (frame := capture.read())[0]:
            decoded.append(frame[1])
        capture.release()
    return decoded


# --------------------------------------------------------------------------------------------
# Stability and motion, on frames in memory
# --------------------------------------------------------------------------------------------
def made_up_frames(frames, model: MakeupModel, mode: str, cfg, true_crops=None) -> tuple[list, list, list]:
    """(outputs, crop matrices, residuals) of `mode` (MODES): tinybeauty_video's tracker with the smoothing
    SWITCHES gives, "photo_mode" (FaceAligner.detect on every frame, as tinybeauty_inference.py --full-photo)
    or "true_pose"/"true_pose_filtered" (the crops `true_crops` gives, the residual filter off/on). Each
    residual is the float change pasted into that frame, in its crop ((S, S, 3) BGR; None without a face)."""
    outputs, matrices, residuals = [], [], []
    if mode == "photo_mode":
        aligner = FaceAligner(model.size, cfg.face.margin, 1, cfg.face.min_confidence)
        for frame in frames:
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            faces = aligner.detect(rgb)
            residuals.append(None)
            if faces:
                made = model(faces[0].crop[None])[0]
                rgb = aligner.paste_back(rgb, faces[0], made, cfg.face.feather)
                residuals[-1] = (made.astype(np.float32) - faces[0].crop)[..., ::-1]
            outputs.append(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            matrices.append(faces[0].matrix if faces else None)
        aligner.close()
        return outputs, matrices, residuals
    cfg = cfg.copy()
    cfg.smoothing.enabled, cfg.smoothing.transform, cfg.smoothing.residual.enabled = SWITCHES[mode]
    makeup = VideoMakeup(model, cfg, fps=30.0)
    for index, frame in enumerate(frames):
        out = frame.copy()
        if mode.startswith("true_pose"):
            makeup.apply(out, [FaceCrop(true_crops[index], 0)])
            matrices.append(true_crops[index])
        else:
            makeup(out)
            tracks = makeup.tracker.tracks
            matrices.append(tracks[0].matrix.copy() if tracks else None)
        outputs.append(out)
        residuals.append(makeup.pasted[0] if makeup.pasted else None)
    makeup.close()
    return outputs, matrices, residuals


def residuals_in_photo_pose(residuals, matrices, poses, face_px: int, feather: np.ndarray) -> list[np.ndarray]:
    """Each pasted residual (crop) under the feathered edge, warped in one step to the photo's own pose (photo ->
    frame -> crop), in float: the makeup's change before the frame's rounding to uint8."""
    changes = []
    for residual, matrix, pose in zip(residuals, matrices, poses):
        if residual is None:
            changes.append(np.zeros((face_px, face_px, 3), np.float32))
            continue
        photo_to_crop = compose(matrix, pose)
        changes.append(cv2.warpAffine(residual * feather[..., None], photo_to_crop, (face_px, face_px),
                                      flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))  # fmt: skip
    return changes


def changes_in_photo_pose(frames, outputs, poses, face_px: int) -> list[np.ndarray]:
    """Each frame's change (output - input, float32 BGR) warped back to the photo's own pose."""
    back = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # dst(x) = src(pose x): frame -> photo pose
    return [
        cv2.warpAffine(out.astype(np.float32) - frame.astype(np.float32), pose, (face_px, face_px), flags=back)
        for frame, out, pose in zip(frames, outputs, poses)
    ]


def frame_to_frame(changes: list[np.ndarray], region: np.ndarray) -> dict:
    """Mean |change(t) - change(t-1)| over `region` (grey levels, all channels), also relative to mean |change|."""
    step = float(np.mean([np.abs(b - a)[region].mean() for a, b in zip(changes, changes[1:])]))
    size = float(np.mean([np.abs(c)[region].mean() for c in changes]))
    return {
        "grey_levels": round(step, 4),
        "relative": round(step / max(size, 1e-9), 4),
        "mean_abs_change": round(size, 3),
    }


def crop_jitter(matrices, poses, points: np.ndarray) -> dict:
    """How far `points` (photo pose) move inside the model's crop from frame to frame, and how far they are
    from their place in the first frame's crop (crop pixels): the crop's own jitter and lag."""
    placed = []
    for matrix, pose in zip(matrices, poses):
        if matrix is not None:
            to_crop = np.vstack([matrix, [0, 0, 1]]) @ np.vstack([pose, [0, 0, 1]])  # photo -> frame -> crop
            placed.append(points @ to_crop[:2, :2].T + to_crop[:2, 2])
    if len(placed) < 2:
        return {"frames_without_face": len(matrices) - len(placed)}
    steps = [np.linalg.norm(b - a, axis=1).mean() for a, b in zip(placed, placed[1:])]
    lag = [np.linalg.norm(p - placed[0], axis=1).mean() for p in placed]
    return {
        "frame_to_frame_px": round(float(np.mean(steps)), 3),
        "from_first_frame_px_mean": round(float(np.mean(lag)), 3),
        "from_first_frame_px_max": round(float(np.max(lag)), 3),
        "frames_without_face": len(matrices) - len(placed),
    }


def constant_makeup_floor(frames, poses, still_change: np.ndarray, region: np.ndarray) -> dict:
    """The figure of a makeup that does not change on the face at all (the still photo's change, placed with the
    true pose): "uint8" on the frames as written, the floor that their rounding and resampling put under the
    uint8 figure of every run; "float": the same two resamplings (into the frame, back to the photo's pose)
    without the rounding."""
    size, face_px = frames[0].shape[1::-1], still_change.shape[0]
    back = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    floats, rounded = [], []
    for frame, pose in zip(frames, poses):
        placed = cv2.warpAffine(still_change, pose, size, flags=cv2.INTER_LINEAR)  # in the frame
        floats.append(cv2.warpAffine(placed, pose, (face_px, face_px), flags=back))
        placed = np.clip(np.rint(frame + placed), 0, 255) - frame.astype(np.float32)
        rounded.append(cv2.warpAffine(placed.astype(np.float32), pose, (face_px, face_px), flags=back))
    return {
        "float": frame_to_frame(floats, region)["grey_levels"],
        "uint8": frame_to_frame(rounded, region)["grey_levels"],
    }


def error_vs_still(changes: list[np.ndarray], still: np.ndarray, region: np.ndarray) -> dict:
    """Mean |change(t) - the still photo's change| over `region` (grey levels): its mean over the frames and its
    worst frame. A residual filter that lags behind the face (a ghost) raises it over the unfiltered run's."""
    errors = np.array([np.abs(c - still)[region].mean() for c in changes])
    return {"mean": round(float(errors.mean()), 3), "worst": round(float(errors.max()), 3),
            "worst_fast_frame": int(errors.argmax())}  # fmt: skip


def overlap(change: np.ndarray, mask: np.ndarray, near: np.ndarray) -> float:
    """Of the pixels in `near`, the |mask| ones `change` moves most: the fraction of `mask` they cover."""
    strength = np.abs(change).sum(2)[near]
    top = np.zeros(strength.shape, bool)
    top[np.argsort(-strength, kind="stable")[: int(mask.sum())]] = True
    return float((top & mask[near]).sum() / mask.sum())


def grown(mask: np.ndarray, fraction: float) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    radius = max(2, int(round(fraction * max(np.ptp(xs), np.ptp(ys)))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def stability_and_motion(model: MakeupModel, cfg, noise: float, codec: bool, size=(1280, 720), modes=MODES) -> dict:
    """The figures of the module docstring on one clip (`noise`: camera noise std; `codec`: through mp4v)."""
    width, height = size
    frames, poses, photo_bgr = face_clip(PHOTO, width, height, SLOW, FAST, noise=noise)
    frames = codec_round_trip(frames) if codec else frames
    face_px = photo_bgr.shape[0]
    with FaceParser(max_num_faces=1) as parser:
        parse = parser.parse(cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2RGB))
    lips, eyes = parse.makeup == LIPS, parse.makeup == EYES
    regions = {"lips": lips, "eyes": eyes, "lips_and_eyes": lips | eyes}
    near = {"lips": grown(lips, 0.15), "eyes": grown(eyes, 0.15)}
    centres = np.array([np.argwhere(m).mean(0)[::-1] for m in (lips, eyes)])  # (x, y) in the photo

    # The still-image case: photo mode on the photo at rest, centred in the same frame. Its crop, carried
    # through the known motion, is the crop a perfect tracker would give ("true_pose").
    rest = np.array([[1.0, 0.0, (width - face_px) / 2], [0.0, 1.0, (height - face_px) / 2]])
    still = render(photo_bgr, rest, background(width, height))
    still_out, still_crop, _ = made_up_frames([still], model, "photo_mode", cfg)
    still_change = changes_in_photo_pose([still], still_out, [rest], face_px)[0]
    still_overlap = {name: overlap(still_change, regions[name], near[name]) for name in near}
    photo_to_crop = np.vstack([still_crop[0], [0, 0, 1]]) @ np.vstack([rest, [0, 0, 1]])
    true_crops = [(photo_to_crop @ np.linalg.inv(np.vstack([pose, [0, 0, 1]])))[:2] for pose in poses]

    feather = feather_mask(model.size, cfg.face.feather)
    floor = constant_makeup_floor(frames[:SLOW], poses[:SLOW], still_change, regions["lips_and_eyes"])
    result: dict = {"noise_std": noise, "through_mp4v": codec, "still_image_overlap": still_overlap,
                    "constant_makeup_floor": floor}  # fmt: skip
    fast_changes = {}  # of the runs with and without the residual filter (the same tracker, the same crops)
    for mode in modes:
        outputs, matrices, residuals = made_up_frames(frames, model, mode, cfg, true_crops)
        changes = changes_in_photo_pose(frames, outputs, poses, face_px)
        if mode in ("smoothed", "transform_only"):
            fast_changes[mode] = changes[SLOW:]
        floats = residuals_in_photo_pose(residuals[:SLOW], matrices[:SLOW], poses[:SLOW], face_px, feather)
        fast = {name: np.array([overlap(c, regions[name], near[name]) for c in changes[SLOW:]]) for name in near}
        result[mode] = {
            "slow_part_change": {name: frame_to_frame(changes[:SLOW], region) for name, region in regions.items()},
            "slow_part_change_float": {name: frame_to_frame(floats, region) for name, region in regions.items()},
            "slow_part_crop": crop_jitter(matrices[:SLOW], poses[:SLOW], centres),
            "fast_part_crop": crop_jitter(matrices[SLOW:], poses[SLOW:], centres),
            "fast_part_overlap_vs_still": {
                name: {
                    "mean": round(float(v.mean()) / still_overlap[name], 4),
                    "min": round(float(v.min()) / still_overlap[name], 4),
                }
                for name, v in fast.items()
            },
            "fast_part_error_vs_still": error_vs_still(changes[SLOW:], still_change, regions["lips_and_eyes"]),
        }
    change = {mode: result[mode]["slow_part_change"]["lips_and_eyes"]["grey_levels"] for mode in modes}
    if len(fast_changes) == 2:  # what the residual filter changes in the fast part: a lagging ghost would show here
        effect = [np.abs(a - b)[regions["lips_and_eyes"]].mean() for a, b in zip(*fast_changes.values())]
        result["fast_part_residual_filter_effect"] = {"mean": round(float(np.mean(effect)), 3),
                                                      "worst": round(float(np.max(effect)), 3),
                                                      "worst_fast_frame": int(np.argmax(effect))}  # fmt: skip
    floats = {mode: result[mode]["slow_part_change_float"]["lips_and_eyes"]["grey_levels"] for mode in modes}
    if "unsmoothed" in change:  # each run's figure over the unsmoothed run's: the goal is <= 0.5 for "smoothed"
        result["over_unsmoothed"] = {
            m: round(v / change["unsmoothed"], 4) for m, v in change.items() if m != "unsmoothed"
        }
        result["over_unsmoothed_float"] = {m: round(v / floats["unsmoothed"], 4) for m, v in floats.items()
                                           if m != "unsmoothed"}  # fmt: skip
    if "smoothed" in change and "unsmoothed" in change:
        result["smoothed_over_unsmoothed"] = result["over_unsmoothed"]["smoothed"]
        result["smoothed_over_unsmoothed_float"] = result["over_unsmoothed_float"]["smoothed"]
    result["still_image_overlap"] = {k: round(v, 4) for k, v in still_overlap.items()}
    return result


# --------------------------------------------------------------------------------------------
# Speed: the whole pipeline on a file
# --------------------------------------------------------------------------------------------
def speed_clip(width: int, height: int, frames: int, folder: Path) -> Path:
    """An mp4v file of the clip (half slow, half fast) with camera noise, to time the whole pipeline on."""
    clip, _, _ = face_clip(PHOTO, width, height, frames // 2, frames - frames // 2, noise=2.0)
    return write_clip(clip, folder / f"clip_{height}p.mp4")


def speed(model: MakeupModel, cfg, source: Path, folder: Path) -> dict:
    summary = process_video(model, source, folder / f"out_{source.name}", cfg)
    keys = ("frames", "frames_with_face", "fps_end_to_end", "cpu_ms_per_frame", "ms_per_frame", "detections",
            "landmark_runs", "seconds")  # fmt: skip
    return {"size": [summary["width"], summary["height"]], **{key: summary[key] for key in keys},
            "wall_ms_per_frame": round(1000 * summary["seconds"] / summary["frames"], 2),
            "sum_of_parts_ms": round(sum(summary["ms_per_frame"].values()), 2)}  # fmt: skip


def goals(result: dict, threads: int) -> dict:
    out = {}
    for run in result.get("speed", []):
        if run["size"] == [1280, 720] and run["threads"] == threads:
            out[f"fps_720p_{Path(run['model']).stem}"] = {"value": run["fps_end_to_end"], "goal": ">= 30",
                                                          "met": run["fps_end_to_end"] >= 30}  # fmt: skip
    for clip, figures in result.get("stability", {}).items():
        if isinstance(figures, dict) and "smoothed_over_unsmoothed" in figures:
            ratio, lips = figures["smoothed_over_unsmoothed"], figures["smoothed"]["fast_part_overlap_vs_still"]["lips"]
            floor = figures["constant_makeup_floor"]["uint8"] / figures["unsmoothed"]["slow_part_change"][
                "lips_and_eyes"]["grey_levels"]  # fmt: skip
            out[f"stability_{clip}"] = {"value": ratio, "goal": "<= 0.5", "met": bool(ratio <= 0.5),
                                        "constant_makeup_floor_over_unsmoothed": round(floor, 4),
                                        "each_run_over_unsmoothed": figures["over_unsmoothed"]}  # fmt: skip
            ratio = figures["smoothed_over_unsmoothed_float"]
            out[f"stability_float_{clip}"] = {"value": ratio, "goal": "<= 0.5", "met": bool(ratio <= 0.5),
                                              "each_run_over_unsmoothed": figures["over_unsmoothed_float"]}  # fmt: skip
            out[f"lip_overlap_fast_{clip}"] = {"value": lips, "goal": ">= 0.9 (mean and min)",
                                               "met": bool(lips["min"] >= 0.9)}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help=".onnx or .pt; repeatable (the first "
                        "one runs the stability part)")  # fmt: skip
    parser.add_argument("--threads", type=int, action="append", default=None, help="model threads (default: 1 and 2)")
    parser.add_argument("--frames", type=int, default=150, help="frames of each speed clip (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="speed runs of each setting; the median is reported")
    parser.add_argument("--out", default=str(REPO / "bench/results/video_bench.json"))
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-stability", action="store_true")
    parser.add_argument("--modes", default=",".join(MODES), help="stability runs, comma-separated (default: all)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="configs/video.yaml overrides")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(DEFAULT_CONFIG, args.overrides)
    load = lambda: [round(v, 2) for v in os.getloadavg()]  # noqa: E731
    result: dict = {"bench": "video", "load_average_start": load(), "cpu_count": os.cpu_count(),
                    "overrides": args.overrides}  # fmt: skip
    if not args.skip_stability:
        model = MakeupModel(args.model[0], cfg.engine, cfg.threads, cfg.intensity)
        result["stability"] = {"model": args.model[0], "clip_size": [1280, 720], "slow_frames": SLOW,
                               "fast_frames": FAST, "photo": PHOTO.name}  # fmt: skip
        for name, noise, codec in (("clean", 0.0, False), ("camera_noise_mp4v", 2.0, True)):
            log.info("stability and motion, %s clip, with %s", name, args.model[0])
            result["stability"][name] = stability_and_motion(model, cfg, noise, codec, modes=args.modes.split(","))
        result["stability"]["load_average"] = load()
    if not args.skip_speed:
        result["speed"] = []
        with tempfile.TemporaryDirectory() as tmp:
            for width, height in ((1280, 720), (1920, 1080)):
                source = speed_clip(width, height, args.frames, Path(tmp))
                for path in args.model:
                    for threads in args.threads or [1, 2]:
                        log.info("speed: %s, %d thread(s), %dx%d", path, threads, width, height)
                        model = MakeupModel(path, cfg.engine, threads, cfg.intensity)
                        runs = sorted((speed(model, cfg, source, Path(tmp)) for _ in range(args.repeats)),
                                      key=lambda run: run["fps_end_to_end"])  # fmt: skip
                        result["speed"].append({"model": path, "threads": threads, **runs[len(runs) // 2],
                                                "fps_all_runs": [run["fps_end_to_end"] for run in runs],
                                                "load_average": load()})  # fmt: skip
    result["goals"] = goals(result, cfg.threads)
    result["load_average_end"] = load()
    text = json.dumps(result, indent=1)
    atomic_write_text(args.out, text)
    print(text)
    return result


if __name__ == "__main__":
    main()

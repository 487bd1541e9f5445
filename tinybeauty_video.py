"""Makeup on a video: track each face, smooth its crop over time, run TinyBeauty, paste its change back.

    python tinybeauty_video.py --model export/tinybeauty_fp32.onnx --input clip.mp4 --output clip_makeup.mp4
    python tinybeauty_video.py --model tinybeauty_model/tinybeauty_best_psnr.pt --input clip.mp4 --output out.mp4
    python tinybeauty_video.py --model M --input clip.mp4 --output out.mkv intensity=0.7 smoothing.enabled=false
    python tinybeauty_video.py --model M --input clip.mp4 --output out.mp4 smoothing.residual.enabled=false

The output has the input's frame rate, size and number of frames. Its codec follows its suffix (.mp4 and
.mov: mp4v, .avi: MJPG, .mkv: lossless FFV1; `codec=` picks another FourCC). OpenCV reads and writes
video only: when `ffmpeg` is on the PATH the input's audio is copied into the output, otherwise it is
dropped and the log says so. configs/video.yaml holds every parameter. Per frame:
1. Faces are found with photo mode's detector and framing (data.face_align.FaceAligner, the crops the
   model was trained on) while none is tracked, and every `tracking.redetect_every` frames.
2. A tracked face is followed by MediaPipe FaceMesh in video mode on its crop: a similarity fit of rigid
   landmarks (eye corners, nose, upper face outline; not lips or jaw, which move when speaking) onto where
   they sat in the face's first crop gives the crop transform. The landmark model is skipped while the
   crop's image has not changed, and runs at least every `tracking.landmarks_max_gap` frames.
3. A One-Euro filter (Casiez et al., CHI 2012) smooths the transform's centre, scale and angle: hard
   while the face is still (no jitter), hardly when it moves fast (no lag).
4. TinyBeauty (ONNX Runtime by default; a .pt checkpoint is exported to ONNX first, `engine=torch` runs
   it in PyTorch) on the aligned crop. Its change, the clamped output minus the crop as in photo mode, is
   low-passed over time in crop coordinates (ResidualFilter: the previous change carried along with the
   face and blended with this one, strongly for a still face, hardly for a fast one or where the change
   is large; a new face starts from its raw change), then warped back into the frame and added under a
   feathered edge: FaceAligner.paste_back's residual method, with the feather applied before the warp
   (one warp instead of two; within a grey level). `smoothing.enabled=false` turns off both smoothings.
Frames without a face are written as decoded. Decoding, tracking, the model with its paste-back and
encoding run in four threads, each a frame or more ahead of the next (OpenCV, MediaPipe and ONNX
Runtime let go of the GIL). An unreadable video stops with a message naming the file; a truncated or
corrupt one stops where it breaks, and the message says that the frames processed so far are in the
output, a valid video (exit status 2, as for every input error). The model runs with one thread by
default: two compete with the pipeline's own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from common import atomic_write_text, load_config, log, run_cli, setup_logging
from data.face_align import FaceAligner, feather_mask
from errors import ConfigError, InputError, ModelError

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "video.yaml"
CODECS = {".mp4": "mp4v", ".mov": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}
# FaceMesh points that move with the head and not with the face's expression: eye corners, nose, the upper
# face outline and the cheekbones (lips, jaw, brows and eyelids move when someone speaks or blinks).
RIGID_LANDMARKS = [33, 133, 362, 263, 1, 2, 4, 5, 6, 168, 195, 197, 98, 327, 10, 338, 297, 332, 284, 251, 389, 356,
                   454, 109, 67, 103, 54, 21, 162, 127, 234, 50, 280, 117, 346, 123, 352]  # fmt: skip
THUMB = 32  # side of the grey thumbnail that tells whether a tracked face moved


class VideoReadError(InputError):
    """A video that cannot be read to its end. `summary` describes the frames written before it broke
    (None when nothing was written)."""

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary


# --------------------------------------------------------------------------------------------
# The model: uint8 RGB crops in, uint8 RGB crops with makeup out
# --------------------------------------------------------------------------------------------
class MakeupModel:
    """TinyBeauty on (N, S, S, 3) uint8 RGB crops -> the same with makeup at `intensity` (0 to 1.5).

    A .onnx file (tinybeauty_export.py's fp32 or int8) runs in ONNX Runtime. A .pt checkpoint is exported to
    ONNX first (into a temporary folder) unless `engine` is "torch". The output is photo mode's:
    clamp(face + intensity x (model(face) - face)), rounded to uint8 as common.to_uint8 does.
    """

    def __init__(self, path: str | Path, engine: str = "onnxruntime", threads: int = 1, intensity: float = 1.0):
        from tinybeauty_inference import check_intensity

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model not found: {path}")
        if engine not in ("onnxruntime", "torch"):
            raise ConfigError(f"config key 'engine' must be onnxruntime or torch, not '{engine}'")
        self.path, self.engine, self.intensity = path, engine, check_intensity(intensity)
        self.threads = int(threads)
        if path.suffix == ".onnx":
            if engine == "torch":
                raise ConfigError(f"{path} is an ONNX file: engine=torch needs a .pt checkpoint")
            self._onnx(path)
        elif engine == "onnxruntime":
            with tempfile.TemporaryDirectory() as tmp:  # ONNX Runtime reads the file once, at session start
                self._onnx(self._export(path, Path(tmp)))
        else:
            self._torch(path)

    def _export(self, checkpoint: Path, folder: Path) -> Path:
        import torch

        from tinybeauty_export import export_onnx
        from tinybeauty_inference import load_model

        model, size = load_model(checkpoint, torch.device("cpu"))
        return export_onnx(model, folder / "tinybeauty_fp32.onnx", size)

    def _onnx(self, path: Path) -> None:
        from tinybeauty_export import INTENSITY, ort_session

        self.session = ort_session(path, self.threads)
        self.size = int(self.session.get_inputs()[0].shape[-1])
        names = {i.name for i in self.session.get_inputs()} | {
            i.name for i in self.session.get_overridable_initializers()
        }
        self._feed = {INTENSITY: np.array(self.intensity, np.float32)} if INTENSITY in names else {}
        self._blend_here = not self._feed and self.intensity != 1.0  # an export without the intensity input

    def _torch(self, path: Path) -> None:
        import torch

        from tinybeauty_inference import load_model

        torch.set_num_threads(self.threads)
        self.model, self.size = load_model(path, torch.device("cpu"))
        self.session = None

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        source = crops.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - 1  # (N, 3, S, S) in [-1, 1]
        import torch

        from tinybeauty_inference import blend

        if self.session is not None:
            makeup = self.session.run(None, {"source": source, **self._feed})[0]
            if self._blend_here:  # an export without the intensity input: photo mode's blend
                makeup = blend(torch.from_numpy(source), torch.from_numpy(makeup), self.intensity).numpy()
        else:
            with torch.no_grad():
                x = torch.from_numpy(source)
                makeup = blend(x, self.model(x).float(), self.intensity).numpy()
        made = np.rint((np.clip(makeup, -1, 1) + 1) * np.float32(127.5)).astype(np.uint8)  # as common.to_uint8
        return np.ascontiguousarray(made.transpose(0, 2, 3, 1))


# --------------------------------------------------------------------------------------------
# Tracking: crop transforms, their smoothing, the landmark model
# --------------------------------------------------------------------------------------------
def compose(first: np.ndarray, then: np.ndarray) -> np.ndarray:
    """The (2, 3) affine `first` after `then` (x -> first(then(x))), in plain arithmetic: a BLAS call (`@`,
    np.linalg.inv) on these tiny matrices can cost milliseconds on a loaded machine, waking its threads."""
    out = np.empty((2, 3))
    out[:, :2] = first[:, :1] * then[:1, :2] + first[:, 1:2] * then[1:2, :2]
    out[:, 2] = first[:, 0] * then[0, 2] + first[:, 1] * then[1, 2] + first[:, 2]
    return out


def affine_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(K, 2) points through the (2, 3) affine `matrix`, without BLAS (see `compose`)."""
    return points[:, :1] * matrix[:, 0] + points[:, 1:] * matrix[:, 1] + matrix[:, 2]


def _alpha(cutoff, rate: float):
    """The weight of a new sample in a first-order low-pass at `cutoff` Hz (number or array), sampled at `rate` Hz."""
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau * rate)


class OneEuroFilter:
    """The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) on a vector sampled at `rate` Hz.

    Each element is low-passed with a cutoff of min_cutoff + beta x |its smoothed speed| (Hz): a still
    signal is smoothed hard, a fast one hardly, which is what removes jitter without adding lag."""

    def __init__(self, rate: float, min_cutoff, beta, d_cutoff: float = 1.0):
        self.rate = float(rate)
        self.min_cutoff, self.beta = np.asarray(min_cutoff, np.float64), np.asarray(beta, np.float64)
        self.d_cutoff = float(d_cutoff)
        self.value: np.ndarray | None = None
        self.speed: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.value is None:
            self.value, self.speed = x.copy(), np.zeros_like(x)
            return x.copy()
        speed = (x - self.value) * self.rate
        self.speed = self.speed + _alpha(self.d_cutoff, self.rate) * (speed - self.speed)
        alpha = _alpha(self.min_cutoff + self.beta * np.abs(self.speed), self.rate)
        self.value = self.value + alpha * (x - self.value)
        return self.value.copy()


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares similarity (rotation, one scale, translation) taking points src (K, 2) onto dst (K, 2):
    the (2, 3) affine and the RMS distance left (dst's units)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    norm = (s**2).sum()
    a = (s * d).sum() / norm
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / norm
    linear = np.array([[a, -b], [b, a]])
    matrix = np.c_[linear, dst_mean - linear @ src_mean]
    error = float(np.sqrt((((src @ linear.T + matrix[:, 2]) - dst) ** 2).sum(1).mean()))
    return matrix, error


def crop_params(matrix: np.ndarray, size: int) -> np.ndarray:
    """(centre x, centre y, side, angle in degrees) of a photo -> crop similarity, FaceAligner.crop_matrix's inverse."""
    alpha, beta = matrix[0, 0], matrix[0, 1]  # cv2.getRotationMatrix2D's [[a, b], [-b, a]]
    scale = math.hypot(alpha, beta)
    centre = np.linalg.solve(matrix[:, :2], size / 2 - matrix[:, 2])
    return np.array([centre[0], centre[1], size / scale, math.degrees(math.atan2(beta, alpha))])


@dataclass(eq=False)  # tracks are told apart by identity
class Track:
    """One face followed through the video."""

    params: np.ndarray  # (4,) the last measured crop: centre x, y (pixels), side (pixels), angle (degrees)
    reference: np.ndarray  # (K, 2) the rigid landmarks in the face's first crop (crop pixels): what fits aim at
    mesh: object  # this face's own FaceMesh in video mode (it tracks between calls)
    unit: float  # the crop's side when the face was found: the filter works in face widths, not pixels
    smoother: OneEuroFilter | None
    matrix: np.ndarray  # (2, 3) the smoothed photo -> crop affine: the crop the model gets
    thumb: np.ndarray  # (THUMB, THUMB) grey: the tracked crop at the last landmark run
    key: int = 0  # the track's number in the video: a new number is a new face (its residual filter starts afresh)
    since_landmarks: int = 0


@dataclass
class FaceCrop:
    """One face of one frame, as the tracker hands it to the model stage."""

    matrix: np.ndarray  # (2, 3) the (smoothed) frame -> crop affine
    key: int  # its track's number: the residual filter keeps one state per number


class FaceTracker:
    """The faces of a video frame after frame: `update(frame)` -> a FaceCrop (smoothed photo -> crop affine and
    the track's number) per face."""

    def __init__(self, cfg: DictConfig, fps: float, size: int = 256):
        self.cfg, self.fps, self.size = cfg, float(fps), int(size)
        face = cfg.face
        self.aligner = FaceAligner(size, face.margin, cfg.max_faces, face.min_confidence)
        self.tracks: list[Track] = []
        self._spare_meshes: list = []
        self._since_detection = math.inf
        self._next_key = 0
        self.counts = {"detections": 0, "landmark_runs": 0, "faces_found": 0}

    # ---- per frame
    def update(self, frame: np.ndarray) -> list[FaceCrop]:
        """(H, W, 3) uint8 BGR frame -> the crop of each tracked face, largest first."""
        lost = False
        for track in list(self.tracks):
            if not self._follow(track, frame):
                self._drop(track)
                lost = True
        self._since_detection += 1
        every = self.cfg.tracking.redetect_every if self.tracks else self.cfg.tracking.search_every
        if lost or self._since_detection >= every:
            self._detect(frame)
        return [FaceCrop(track.matrix, track.key) for track in self.tracks]

    def _follow(self, track: Track, frame: np.ndarray) -> bool:
        """Measure the face in this frame when it moved (or it is time), then smooth; False when it is lost."""
        cfg = self.cfg.tracking
        measured = self.aligner.crop_matrix(track.params[:2], track.params[2], track.params[3])
        change = np.abs(thumbnail(frame, measured, self.size) - track.thumb).mean()  # grey levels
        if change <= cfg.still_threshold and track.since_landmarks + 1 < cfg.landmarks_max_gap:
            track.since_landmarks += 1
        else:
            crop = cv2.warpAffine(frame, measured, (self.size, self.size), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT_101)  # fmt: skip
            marks = rigid_landmarks(track.mesh, cv2.cvtColor(crop, cv2.COLOR_BGR2RGB), self.size)
            self.counts["landmark_runs"] += 1
            if marks is None:
                return False
            back = cv2.invertAffineTransform(measured)
            in_photo = marks @ back[:, :2].T + back[:, 2]  # (K, 2) frame pixels
            fitted, error = fit_similarity(in_photo, track.reference)
            if error > cfg.max_fit_error * self.size:
                return False
            params = crop_params(fitted, self.size)
            params[3] = track.params[3] + (params[3] - track.params[3] + 180) % 360 - 180  # no jump at +-180
            track.params = params
            track.thumb = thumbnail(frame, self.aligner.crop_matrix(params[:2], params[2], params[3]), self.size)
            track.since_landmarks = 0
        self._smooth(track)
        return True

    def _smooth(self, track: Track) -> None:
        cx, cy, side, angle = track.params
        if track.smoother is not None:  # in face widths, log scale and radians: see configs/video.yaml
            unit = track.unit
            x, y, log_side, radians = track.smoother(
                np.array([cx / unit, cy / unit, math.log(side / unit), math.radians(angle)])
            )
            cx, cy, side, angle = x * unit, y * unit, math.exp(log_side) * unit, math.degrees(radians)
        track.matrix = self.aligner.crop_matrix(np.array([cx, cy]), side, angle)

    # ---- finding faces
    def _detect(self, frame: np.ndarray) -> None:
        """Photo mode's detector on the whole frame: start tracks for faces not yet tracked, keep the largest."""
        self._since_detection = 0
        self.counts["detections"] += 1
        for face in self.aligner.detect(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)):
            params = crop_params(face.matrix, self.size)
            if any(np.hypot(*(params[:2] - t.params[:2])) < 0.5 * max(params[2], t.params[2]) for t in self.tracks):
                continue  # already tracked: the track's own crop is smoother than a new detection
            track = self._start(face, params, frame)
            if track is not None:
                self.tracks.append(track)
        self.tracks.sort(key=lambda t: -t.params[2])
        for track in self.tracks[self.cfg.max_faces :]:
            self._drop(track)

    def _start(self, face, params: np.ndarray, frame: np.ndarray) -> Track | None:
        mesh = self._spare_meshes.pop() if self._spare_meshes else self._new_mesh()
        marks = rigid_landmarks(mesh, face.crop, self.size)
        if marks is None:  # FaceMesh does not see a face in the detector's crop: not one to track
            self._spare_meshes.append(mesh)
            return None
        smoothing = self.cfg.smoothing
        smoother = None
        if smoothing.enabled and smoothing.transform:
            groups = [smoothing.position, smoothing.position, smoothing.scale, smoothing.angle]
            smoother = OneEuroFilter(self.fps, [g.min_cutoff for g in groups], [g.beta for g in groups],
                                     smoothing.d_cutoff)  # fmt: skip
        track = Track(params=params, reference=marks, mesh=mesh, unit=float(params[2]), smoother=smoother,
                      matrix=face.matrix, thumb=thumbnail(frame, face.matrix, self.size),
                      key=self._next_key)  # fmt: skip
        self._next_key += 1
        self._smooth(track)
        self.counts["faces_found"] += 1
        return track

    def _new_mesh(self):
        import mediapipe as mp  # imported here: slow

        return mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False,
            max_num_faces=1,
            refine_landmarks=False,
            min_detection_confidence=self.cfg.face.min_confidence,
            min_tracking_confidence=self.cfg.tracking.min_tracking_confidence,
        )

    def _drop(self, track: Track) -> None:
        if track in self.tracks:
            self.tracks.remove(track)
            self._spare_meshes.append(track.mesh)

    def close(self) -> None:
        for mesh in self._spare_meshes + [t.mesh for t in self.tracks]:
            mesh.close()
        self._spare_meshes, self.tracks = [], []
        self.aligner.close()


def rigid_landmarks(mesh, crop_rgb: np.ndarray, size: int) -> np.ndarray | None:
    """(K, 2) crop pixels of RIGID_LANDMARKS from a FaceMesh, or None when it finds no face."""
    result = mesh.process(crop_rgb)
    if not result.multi_face_landmarks:
        return None
    points = result.multi_face_landmarks[0].landmark
    return np.array([(points[i].x * size, points[i].y * size) for i in RIGID_LANDMARKS], np.float64)


def thumbnail(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """(THUMB, THUMB) float32 grey of the crop `matrix` frames: warped at 4x and area-averaged down, so that
    pixel noise averages out and a change means the face moved."""
    scale = np.array([[4 * THUMB / size], [4 * THUMB / size]])
    small = cv2.warpAffine(frame, matrix * scale, (4 * THUMB, 4 * THUMB), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT_101)  # fmt: skip
    small = cv2.resize(small, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The residual filter: the makeup's change, low-passed over time on the face
# --------------------------------------------------------------------------------------------
class ResidualFilter:
    """A temporal low-pass of one face's makeup residual (clamped model output - crop), in crop coordinates.

    Even under a perfect crop the residual flickers (resampling the moving face and the model's response to
    it), so smoothing the crop transform alone cannot steady the makeup. Each frame the previous filtered
    residual is carried into this frame's crop, then R_t = R_prev + a x (r_t - R_prev):
    - carried: through crop_t <- frame <- crop_t-1 and the face's motion low-passed at `motion_cutoff` Hz
      (the crop follows the face, so that motion is the crop's own step, whose jitter the low-pass takes
      out; 0 keeps the residual still in the frame, a large cutoff moves it with the crop);
    - `a` is One-Euro's weight for a cutoff of min_cutoff + beta x speed (Hz), the speed being how fast the
      crop moves over the frame (crop sides per second): small for a still face, close to 1 for a fast one;
    - per pixel, a difference |r_t - R_prev| near `gate` grey levels or beyond (a real change, such as a
      mouth opening, not flicker) raises `a` towards 1 (quadratically; gate 0 turns this off).
    The first frame of a face takes its raw residual."""

    def __init__(self, rate: float, min_cutoff: float, beta: float, gate: float, motion_cutoff: float):
        self.rate, self.min_cutoff, self.beta, self.gate = float(rate), float(min_cutoff), float(beta), float(gate)
        self.motion_blend = _alpha(float(motion_cutoff), self.rate) if motion_cutoff > 0 else 0.0
        self.residual: np.ndarray | None = None  # (S, S, 3) float32, in the previous frame's crop
        self.matrix: np.ndarray | None = None  # (2, 3) the previous frame -> crop affine
        self.motion = np.eye(2, 3)  # (2, 3) the face's low-passed motion from frame to frame, in crop coordinates
        self.blend = 1.0  # the last frame's `a` (before the gate), for tests and logs

    def __call__(self, residual: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        size = residual.shape[0]
        if self.residual is None:
            self.residual, self.matrix, self.blend = residual, matrix, 1.0
            return residual
        # crop_t <- frame <- crop_t-1, and how far it moves the crop's corners and centre (crop pixels)
        step = compose(matrix, cv2.invertAffineTransform(self.matrix))
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size], [size / 2, size / 2]], np.float64)
        shift = affine_points(corners, step) - corners
        motion = float(np.sqrt((shift**2).sum(1)).mean())
        self.blend = _alpha(self.min_cutoff + self.beta * motion / size * self.rate, self.rate)
        # The crop follows the face, so the face moved by about step^-1 in the old crop: low-passed, that motion
        # carries the residual along (the crop's own jitter stays out of it).
        self.motion = self.motion + self.motion_blend * (cv2.invertAffineTransform(step) - self.motion)
        carry = compose(step, self.motion)
        # Pixels carried in from outside the previous crop repeat its edge, which the feather hides at paste-back.
        previous = cv2.warpAffine(self.residual, carry, (size, size), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        filtered = residual - previous  # the difference, then (in place, to keep this under ~1 ms) the result
        if self.gate > 0:  # a large difference is a change of the face, not flicker: let it through
            blend = np.abs(filtered)
            blend = np.maximum(np.maximum(blend[..., 0], blend[..., 1]), blend[..., 2])  # ndarray.max(2): 20x slower
            blend *= np.float32(1 / self.gate)
            np.minimum(np.square(blend, out=blend), 1, out=blend)
            blend *= np.float32(1 - self.blend)
            blend += np.float32(self.blend)
            filtered *= blend[..., None]
        else:
            filtered *= np.float32(self.blend)
        filtered += previous
        self.residual, self.matrix = filtered, matrix
        return filtered


# --------------------------------------------------------------------------------------------
# One frame: track, crop, model, paste back
# --------------------------------------------------------------------------------------------
def paste_change(frame: np.ndarray, matrix: np.ndarray, change: np.ndarray, feather: np.ndarray) -> None:
    """Add a crop's change (S, S, 3) float32 to `frame` (uint8, in place) through the inverse of `matrix`, fading
    out at the crop's edge: FaceAligner.paste_back(mode="residual") with the feather applied before the warp."""
    size = change.shape[0]
    inverse = cv2.invertAffineTransform(matrix)
    corners = affine_points(np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64), inverse)
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 1, [frame.shape[1], frame.shape[0]])
    if x1 <= x0 or y1 <= y0:
        return
    to_region = inverse.copy()
    to_region[:, 2] -= [x0, y0]
    weighted = change * feather[..., None]
    warped = cv2.warpAffine(weighted, to_region, (int(x1 - x0), int(y1 - y0)), flags=cv2.INTER_LINEAR)
    region = frame[y0:y1, x0:x1]
    region[:] = cv2.add(warped, region, dtype=cv2.CV_8U)  # float sum, rounded and saturated to 0..255


def residual_settings(cfg: DictConfig) -> DictConfig | None:
    """cfg.smoothing.residual when the residual filter is on (ConfigError, naming the key, for a bad value)."""
    residual = cfg.smoothing.residual
    if not (cfg.smoothing.enabled and residual.enabled):
        return None
    for key, low in (("min_cutoff", 0.0), ("beta", None), ("gate", None), ("motion_cutoff", None)):
        value = residual.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or value == low:
            need = "> 0" if low is not None else ">= 0"
            raise ConfigError(f"config key 'smoothing.residual.{key}' must be a number {need}, not {value!r}")
    return residual


class VideoMakeup:
    """BGR frames in, the same frames with makeup on their faces (changed in place), in two steps that may run
    in different threads, one frame apart: `track(frame)` (in frame order) and `apply(frame, faces)` (in frame
    order too: the residual filter keeps each face's last residual). Each step's time is summed in `seconds`."""

    def __init__(self, model: MakeupModel, cfg: DictConfig, fps: float):
        self.model, self.fps = model, float(fps)
        self.tracker = FaceTracker(cfg, fps, model.size)
        self.feather = feather_mask(model.size, cfg.face.feather)
        self.residual_cfg = residual_settings(cfg)
        self.filters: dict[int, ResidualFilter] = {}  # by track number: a new face starts afresh
        self.pasted: list[np.ndarray] = []  # the residuals pasted into the last frame (crop, float32), for the bench
        self.seconds = {"track": 0.0, "model": 0.0, "paste": 0.0}

    def __call__(self, frame: np.ndarray) -> int:
        """Number of faces made up in `frame`; 0 leaves it untouched."""
        faces = self.track(frame)
        self.apply(frame, faces)
        return len(faces)

    def track(self, frame: np.ndarray) -> list[FaceCrop]:
        start = time.perf_counter()
        faces = self.tracker.update(frame)
        self.seconds["track"] += time.perf_counter() - start
        return faces

    def apply(self, frame: np.ndarray, faces: list[FaceCrop]) -> np.ndarray:
        self.filters = {face.key: self.filters.get(face.key) or self._new_filter() for face in faces}
        self.pasted = []
        if not faces:
            return frame
        start = time.perf_counter()
        crops = np.stack([self.tracker.aligner.crop_with_matrix(f.matrix, frame) for f in faces])  # (N, S, S, 3)
        made = self.model(crops[..., ::-1])[..., ::-1]  # the model takes and gives RGB
        modelled = time.perf_counter()
        self.seconds["model"] += modelled - start
        for face, crop, new in zip(faces, crops, made):
            residual = new.astype(np.float32) - crop.astype(np.float32)  # (S, S, 3) the makeup's change, BGR
            residual_filter = self.filters[face.key]
            if residual_filter is not None:
                residual = residual_filter(residual, face.matrix)
            self.pasted.append(residual)
            paste_change(frame, face.matrix, residual, self.feather)
        self.seconds["paste"] += time.perf_counter() - modelled
        return frame

    def _new_filter(self) -> ResidualFilter | None:
        cfg = self.residual_cfg
        if cfg is None:
            return None
        return ResidualFilter(self.fps, cfg.min_cutoff, cfg.beta, cfg.gate, cfg.motion_cutoff)

    def close(self) -> None:
        self.tracker.close()


# --------------------------------------------------------------------------------------------
# Video in and out
# --------------------------------------------------------------------------------------------
@dataclass
class VideoInfo:
    path: Path
    fps: float
    width: int
    height: int
    frames: int  # what the container says; 0 when it does not


def open_video(path: Path) -> tuple[cv2.VideoCapture, VideoInfo, np.ndarray]:
    """The capture, what it holds, and its first frame (BGR); VideoReadError when it cannot be read at all."""
    if not path.is_file():
        raise VideoReadError(f"video not found: {path}")
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        capture.release()
        raise VideoReadError(
            f"cannot read video {path}: OpenCV (FFmpeg) cannot decode a frame of it. It is not a video, or it is "
            "cut short before its index (an MP4 keeps it at its end unless written with faststart); nothing was written"
        )
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not (math.isfinite(fps) and fps > 0):
        log.warning("%s does not give its frame rate: writing at 30 fps", path)
        fps = 30.0
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    return capture, VideoInfo(path, fps, first.shape[1], first.shape[0], max(frames, 0)), first


class FrameReader:
    """Decodes in a thread of its own (OpenCV releases the GIL), a few frames ahead of the caller."""

    def __init__(self, capture: cv2.VideoCapture, first: np.ndarray, ahead: int = 8):
        self.capture, self.seconds, self.error = capture, 0.0, None
        self._queue: queue.Queue = queue.Queue(ahead)
        self._stop = threading.Event()
        self._queue.put(first)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                start = time.perf_counter()
                ok, frame = self.capture.read()
                self.seconds += time.perf_counter() - start
                if not ok:
                    break
                self._queue.put(frame)
        except Exception as err:  # cv2.error on a broken stream: reported as the video's end
            self.error = err
        finally:
            self._queue.put(None)

    def __iter__(self):
        while (frame := self._queue.get()) is not None:
            yield frame

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a pending put
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self.capture.release()


class Stage:
    """`work(item)` on each item put, in order, in a thread of its own (OpenCV, ONNX Runtime and MediaPipe
    release the GIL, so stages overlap on the cores); its result goes on to `then` when there is one."""

    _END = object()

    def __init__(self, work, then=None, ahead: int = 4):
        self.work, self.then, self.error = work, then, None
        self._queue: queue.Queue = queue.Queue(ahead)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._END:
            if self.error is not None:
                continue  # keep draining, so that put() never blocks
            try:
                result = self.work(item)
                if self.then is not None:
                    self.then(result)
            except BaseException as err:
                self.error = err

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(item)

    def close(self) -> None:
        """Wait until every item put so far is done; raises the first error one of them gave."""
        if self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()
        if self.error is not None:
            raise self.error


class FrameWriter:
    """Encodes in a thread of its own into a hidden file beside `path`; `close()` gives it its name (after
    copying the audio in, when ffmpeg is there), `abort()` deletes it."""

    def __init__(self, path: Path, info: VideoInfo, codec: str = "auto"):
        fourcc = CODECS.get(path.suffix.lower()) if codec == "auto" else codec
        if fourcc is None:
            raise ConfigError(f"no codec known for '{path.suffix}' ({', '.join(CODECS)}): set codec=FOURCC")
        if info.width % 2 or info.height % 2:
            log.warning("the frames are %dx%d: OpenCV's writer drops an odd last row or column, the output is "
                        "%dx%d", info.width, info.height, info.width // 2 * 2, info.height // 2 * 2)  # fmt: skip
        self.path, self.codec, self.seconds, self.frames = path, fourcc, 0.0, 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = path.with_name(f".{path.stem}.partial{path.suffix}")
        self.writer = cv2.VideoWriter(str(self.partial), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), info.fps,
                                      (info.width, info.height))  # fmt: skip
        if not self.writer.isOpened():
            raise ConfigError(f"OpenCV cannot write {fourcc} video to {path}: pick another suffix or codec=FOURCC")
        self._stage = Stage(self._encode, ahead=8)

    def _encode(self, frame: np.ndarray) -> None:
        start = time.perf_counter()
        self.writer.write(frame)
        self.seconds += time.perf_counter() - start
        self.frames += 1

    def write(self, frame: np.ndarray) -> None:
        self._stage.put(frame)

    def close(self, source: Path) -> str:
        """Finish the file (a valid video with every frame written so far); returns what happened to the audio."""
        try:
            self._stage.close()
        except Exception as err:
            self.abort()
            raise OSError(f"writing {self.path} failed: {err}") from err
        self.writer.release()
        audio = copy_audio(source, self.partial, self.path)
        if self.partial.exists():
            os.replace(self.partial, self.path)
        return audio

    def abort(self) -> None:
        try:
            self._stage.close()
        except Exception:
            pass
        self.writer.release()
        self.partial.unlink(missing_ok=True)


def copy_audio(source: Path, video: Path, output: Path) -> str:
    """The video stream of `video` with the audio of `source` into `output` (ffmpeg, stream copy, no re-encode).
    Returns what happened, for the log; without ffmpeg, or when it fails, `video` is left for the caller."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return "not kept: OpenCV writes video only and ffmpeg is not installed (with ffmpeg on the PATH it is copied)"
    muxed = video.with_name(f".{output.stem}.audio{output.suffix}")
    command = [ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(video), "-i", str(source), "-map", "0:v:0",
               "-map", "1:a?", "-c", "copy", "-shortest", str(muxed)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        muxed.unlink(missing_ok=True)
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        return f"not kept: ffmpeg could not copy it into {output.suffix} ({reason})"
    os.replace(muxed, output)
    video.unlink(missing_ok=True)
    return "copied from the input by ffmpeg (when it has any)"


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def process_video(model: MakeupModel, source: Path, output: Path, cfg: DictConfig) -> dict:
    """Every frame of `source` through VideoMakeup into `output`; the summary. VideoReadError when the input
    cannot be read, or breaks off (then with the summary of the valid partial output)."""
    capture, info, first = open_video(source)
    try:
        writer = FrameWriter(output, info, cfg.codec)
    except Exception:
        capture.release()
        raise
    reader, makeup = FrameReader(capture, first), VideoMakeup(model, cfg, info.fps)
    # Tracking runs here, in frame order; the model and the paste-back of a frame run in a stage of their own
    # while the next frame is tracked, and the encoder in another.
    painter = Stage(lambda job: makeup.apply(*job), then=writer.write)
    frames = frames_with_face = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        for frame in tqdm(reader, total=info.frames or None, unit="frame", desc=source.name, disable=None):
            matrices = makeup.track(frame)
            painter.put((frame, matrices))
            frames_with_face += bool(matrices)
            frames += 1
        painter.close()
    except BaseException:
        try:
            painter.close()  # let the frames in flight finish before the writer goes
        except BaseException:
            pass
        writer.abort()
        raise
    finally:
        reader.close()
        makeup.close()
    audio = writer.close(source)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    # The container's count can be an estimate (from the duration) for some formats: a frame short is not a break.
    broken = reader.error is not None or (info.frames > 0 and frames < info.frames - max(1, info.frames // 100))
    summary = {
        "input": str(source),
        "output": str(output),
        "model": str(model.path),
        "engine": model.engine,
        "intensity": model.intensity,
        "frames": frames,
        "frames_in_container": info.frames,
        "complete": not broken,
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "codec": writer.codec,
        "audio": audio,
        "frames_with_face": int(frames_with_face),
        **makeup.tracker.counts,
        "seconds": round(seconds, 3),
        "fps_end_to_end": round(frames / seconds, 2),
        # CPU time of every thread of the process (MediaPipe's and the codecs' included) for a frame: with the
        # machine to itself, 2 cores could do at most 2000 / this many frames a second
        "cpu_ms_per_frame": round(1000 * cpu_seconds / frames, 2),
        "ms_per_frame": {
            part: round(1000 * value / frames, 3)
            for part, value in {"decode": reader.seconds, **makeup.seconds, "encode": writer.seconds}.items()
        },
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if broken:
        reason = f": {reader.error}" if reader.error is not None else ""
        raise VideoReadError(
            f"{source} breaks off after frame {frames} of the {info.frames} its container lists (truncated or "
            f"corrupt{reason}). The {frames} frames processed up to there are in {output}, a valid video.",
            summary,
        )
    return summary


def log_summary(summary: dict) -> None:
    parts = ", ".join(f"{part} {ms:.1f}" for part, ms in summary["ms_per_frame"].items())
    log.info("%d frames (%dx%d at %.3f fps) in %.1f s: %.1f fps end to end (ms per frame: %s, each in its own "
             "thread, overlapping; CPU %.1f ms per frame)", summary["frames"], summary["width"], summary["height"],
             summary["fps"], summary["seconds"], summary["fps_end_to_end"], parts, summary["cpu_ms_per_frame"])  # fmt: skip
    log.info("a face in %d of %d frames (%d face(s) found; detector run %d times, landmark model %d times)",
             summary["frames_with_face"], summary["frames"], summary["faces_found"], summary["detections"],
             summary["landmark_runs"])  # fmt: skip
    log.info("audio %s", summary["audio"])
    log.info("written: %s (%s)", summary["output"], summary["codec"])


def run(model_path: str | Path, source: str | Path, output: str | Path, cfg: DictConfig) -> dict:
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve():
        raise InputError(f"the output would overwrite the input: {output}")
    residual_settings(cfg)  # a bad filter setting stops here, before any output is made
    model = MakeupModel(model_path, cfg.engine, cfg.threads, cfg.intensity)
    log.info("model %s (%s, %d thread(s), intensity %g); %s -> %s", model_path, model.engine, model.threads,
             model.intensity, source, output)  # fmt: skip
    summary = process_video(model, source, output, cfg)
    log_summary(summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.strip().splitlines()[0],
        epilog="Overrides: any key of configs/video.yaml as key=value, e.g. intensity=0.7 smoothing.enabled=false",
    )
    parser.add_argument("--model", required=True, help="tinybeauty_{fp32,int8}.onnx or a tinybeauty_*.pt checkpoint")
    parser.add_argument("--input", required=True, help="a video file")
    parser.add_argument("--output", required=True, help="the video to write (.mp4, .mov, .avi, .mkv)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    parser.add_argument("--summary", default=None, metavar="JSON", help="also write the run's summary here")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(DEFAULT_CONFIG, args.overrides, args.config)
    try:
        summary = run(args.model, args.input, args.output, cfg)
    except VideoReadError as err:
        if err.summary is not None:  # a partial output was written: say what is in it
            log_summary(err.summary)
            if args.summary:
                atomic_write_text(args.summary, json.dumps(err.summary, indent=1))
        raise
    if args.summary:
        atomic_write_text(args.summary, json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

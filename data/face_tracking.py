"""Faces followed through a video: crop transforms from rigid landmarks, their One-Euro smoothing, and the
temporal filter that steadies the makeup's change on the face (`ResidualFilter`).

Photo mode's detector (data.face_align.FaceAligner) finds a face; MediaPipe FaceMesh in video mode then
follows it on its own crop, and a similarity fit of rigid landmarks (eye corners, nose, upper face outline;
not lips or jaw, which move when speaking) onto where they sat in the face's first crop gives the crop
transform. A One-Euro filter (Casiez et al., CHI 2012) smooths its centre, scale and angle. The video
pipeline that uses them is deploy/video.py; configs/video.yaml documents every parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from omegaconf import DictConfig

from data.face_align import FaceAligner

# FaceMesh points that move with the head and not with the face's expression: eye corners, nose, the upper
# face outline and the cheekbones (lips, jaw, brows and eyelids move when someone speaks or blinks).
RIGID_LANDMARKS = [33, 133, 362, 263, 1, 2, 4, 5, 6, 168, 195, 197, 98, 327, 10, 338, 297, 332, 284, 251, 389, 356,
                   454, 109, 67, 103, 54, 21, 162, 127, 234, 50, 280, 117, 346, 123, 352]  # fmt: skip


THUMB = 32  # side of the grey thumbnail that tells whether a tracked face moved


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

        from common import QuietNativeStart

        return QuietNativeStart(  # its start-up log lines: common.py
            lambda: mp.solutions.face_mesh.FaceMesh(
                static_image_mode=False,
                max_num_faces=1,
                refine_landmarks=False,
                min_detection_confidence=self.cfg.face.min_confidence,
                min_tracking_confidence=self.cfg.tracking.min_tracking_confidence,
            )
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

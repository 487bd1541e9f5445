"""Find every face in a photo, crop an eye-levelled square around each, and paste results back.

`FaceAligner.detect(photo)` uses MediaPipe's full-range face detector (shipped in the mediapipe
0.10.21 wheel, so it runs offline; the short-range model is tried when the full-range one finds
nothing). Each face is rotated so its eye line is horizontal (eye centres from FaceMesh on a first
crop: the detector's own eye keypoints are too coarse for that), then cropped to a `size` x `size`
square whose side is the detector box grown by `margin` on every side (margin 0.4: 1.8x the box,
the framing of the SCUT-FBP5500 faces the seed pairs come from). The photo -> crop affine is kept.

`paste_back` moves what a model changed in the crop, not the crop itself: the change
(new_crop - crop) is warped back through the inverse affine and added to the original photo under
a feathered mask. Pixels the model leaves alone come back bit-exact at the photo's own resolution,
so a face cropped to 256 from a 4000-pixel photo does not come back blurred; `mode="replace"`
pastes the crop itself instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from data.face_parsing import LEFT_EYE, RIGHT_EYE, FaceParser


@dataclass
class AlignedFace:
    crop: np.ndarray  # (S, S, 3) uint8, eye line horizontal
    matrix: np.ndarray  # (2, 3) float64 affine: photo (x, y) -> crop (x, y)
    box: tuple[int, int, int, int]  # detector box in the photo: x0, y0, x1, y1 (pixels)
    score: float = 0.0  # detector confidence
    angle: float = 0.0  # degrees the face was rotated by to level the eyes


class FaceAligner:
    def __init__(self, size: int = 256, margin: float = 0.4, max_faces: int = 8, min_confidence: float = 0.5):
        if size < 16:
            raise ValueError(f"crop size must be at least 16 pixels, got {size}")
        self.size, self.margin, self.max_faces = int(size), float(margin), int(max_faces)
        self.min_confidence = float(min_confidence)
        self._detectors: dict[int, object] = {}
        self._mesh = None  # FaceMesh, for the eye line

    def _detector(self, model_selection: int):
        if model_selection not in self._detectors:
            import mediapipe as mp  # imported here: slow, and only needed when detecting

            from common import QuietNativeStart

            self._detectors[model_selection] = QuietNativeStart(  # its start-up log lines: common.py
                lambda: mp.solutions.face_detection.FaceDetection(
                    model_selection=model_selection, min_detection_confidence=self.min_confidence
                )
            )
        return self._detectors[model_selection]

    def _detections(self, photo: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
        """(box x0y0x1y1, right eye, left eye, score) in pixels; full-range model first."""
        height, width = photo.shape[:2]
        for model_selection in (1, 0):
            result = self._detector(model_selection).process(photo)
            found = []
            for det in result.detections or []:
                rel = det.location_data.relative_bounding_box
                box = np.array([rel.xmin, rel.ymin, rel.xmin + rel.width, rel.ymin + rel.height]) * [
                    width,
                    height,
                    width,
                    height,
                ]
                keypoints = det.location_data.relative_keypoints  # 0 right eye, 1 left eye (the subject's)
                right = np.array([keypoints[0].x * width, keypoints[0].y * height])
                left = np.array([keypoints[1].x * width, keypoints[1].y * height])
                found.append((box, right, left, float(det.score[0])))
            if found:
                return found
        return []

    def detect(self, photo: np.ndarray) -> list[AlignedFace]:
        """Every face in an (H, W, 3) uint8 RGB photo of any size, largest first (at most max_faces)."""
        photo = _as_rgb(photo)
        faces = []
        for box, right_eye, left_eye, score in self._detections(photo):
            centre = (box[:2] + box[2:]) / 2
            side = max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * self.margin)
            angle = self._eye_angle(photo, centre, side, _angle(right_eye, left_eye))
            matrix = self.crop_matrix(centre, side, angle)
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            face = AlignedFace(
                crop=np.empty(0, np.uint8), matrix=matrix, box=(x0, y0, x1, y1), score=score, angle=angle
            )
            face.crop = self.crop_with(face, photo)
            faces.append(face)
        faces.sort(key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        return faces[: self.max_faces]

    def _eye_angle(self, photo: np.ndarray, centre: np.ndarray, side: float, coarse: float) -> float:
        """The eye line's angle from FaceMesh on a first crop; the detector's eye keypoints are off by up to
        ~10 degrees on upright faces. Falls back to the detector's angle when FaceMesh finds nothing."""
        if self._mesh is None:
            self._mesh = FaceParser(min_detection_confidence=0.3, max_num_faces=1)
        matrix = self.crop_matrix(centre, side, coarse)
        marks = self._mesh.landmarks(self.crop_with_matrix(matrix, photo))
        if not marks:
            return coarse

        back = cv2.invertAffineTransform(matrix)
        eyes = np.array([marks[0][RIGHT_EYE].mean(0), marks[0][LEFT_EYE].mean(0)], np.float64)
        right, left = np.c_[eyes, np.ones(2)] @ back.T
        return _angle(right, left)

    def crop_with_matrix(self, matrix: np.ndarray, photo: np.ndarray) -> np.ndarray:
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        flags = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        return cv2.warpAffine(photo, matrix, (self.size, self.size), flags=flags, borderMode=cv2.BORDER_REFLECT_101)

    def crop_with(self, face: AlignedFace, photo: np.ndarray) -> np.ndarray:
        """Crop another photo of the same size through `face`'s affine (e.g. the "after" of a before/after pair)."""
        return self.crop_with_matrix(face.matrix, _as_rgb(photo))

    def crop_matrix(self, centre: np.ndarray, side: float, angle: float) -> np.ndarray:
        """Photo -> crop affine: rotate by `angle` about `centre`, scale `side` to `size`, centre in the crop."""
        scale = self.size / side
        matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, scale)
        matrix[:, 2] += np.array([self.size / 2, self.size / 2]) - np.array(centre, np.float64)
        return matrix

    def paste_back(
        self,
        photo: np.ndarray,
        face: AlignedFace,
        new_crop: np.ndarray,
        feather: float = 0.08,
        mode: str = "residual",
        inplace: bool = False,
    ) -> np.ndarray:
        """Put a processed crop back into the photo, fading out over `feather` x crop size at its edge.

        `mode="residual"` (default) adds the warped change (new_crop - face.crop); `"replace"` blends the
        warped crop itself. Returns a new (H, W, 3) uint8 photo, or `photo` itself changed with `inplace`
        (no full-size copy: a 108 MP photo is 324 MB).
        """
        photo = _as_rgb(photo)
        new_crop = _as_rgb(new_crop)
        if new_crop.shape != face.crop.shape:
            raise ValueError(f"new crop {new_crop.shape} does not match the aligned crop {face.crop.shape}")
        # Only the photo's box under the crop is warped: a small face in a large photo stays cheap.
        inverse = cv2.invertAffineTransform(face.matrix)
        corners = np.array([[0, 0, 1], [self.size, 0, 1], [0, self.size, 1], [self.size, self.size, 1]], np.float64)
        xy = corners @ inverse.T
        x0, y0 = np.maximum(np.floor(xy.min(0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(xy.max(0)).astype(int) + 1, [photo.shape[1], photo.shape[0]])
        out = photo if inplace else photo.copy()
        if x1 <= x0 or y1 <= y0:
            return out
        if mode not in ("residual", "replace"):
            raise ValueError(f"paste_back mode must be 'residual' or 'replace', not '{mode}'")
        mask = feather_mask(self.size, feather)
        change = new_crop.astype(np.float32) - face.crop.astype(np.float32) if mode == "residual" else None
        # Band by band down the face's box: a face 6,000 pixels across (a selfie on a 108 MP phone) would
        # otherwise need four float copies of its box at once (1.7 GB). Each band warps with the same affine,
        # moved to the band's corner, so it gets the pixels the whole box would.
        rows = max(1, (1 << 22) // int(x1 - x0))
        for top in range(int(y0), int(y1), rows):
            bottom = min(int(y1), top + rows)
            to_band = inverse.copy()
            to_band[:, 2] -= [x0, top]
            band_size = (int(x1 - x0), bottom - top)
            alpha = cv2.warpAffine(mask, to_band, band_size, flags=cv2.INTER_LINEAR)[..., None]
            region = out[top:bottom, x0:x1].astype(np.float32)
            if change is not None:
                region += cv2.warpAffine(change, to_band, band_size, flags=cv2.INTER_LINEAR) * alpha
            else:
                warped = cv2.warpAffine(
                    new_crop, to_band, band_size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
                )
                region += (warped.astype(np.float32) - region) * alpha
            out[top:bottom, x0:x1] = np.clip(np.round(region), 0, 255).astype(np.uint8)
        return out

    def close(self) -> None:
        for detector in self._detectors.values():
            detector.close()
        self._detectors.clear()
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def __enter__(self) -> FaceAligner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _angle(right_eye: np.ndarray, left_eye: np.ndarray) -> float:
    """Degrees of the eye line (the subject's left eye is on the image's right)."""
    dx, dy = np.asarray(left_eye, np.float64) - np.asarray(right_eye, np.float64)
    return float(np.degrees(np.arctan2(dy, dx)))


def feather_mask(size: int, feather: float) -> np.ndarray:
    """(size, size) float32: 1 inside, a cosine ramp to 0 over the outer `feather` x size pixels."""
    ramp_px = max(feather * size, 1e-6)
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32) + 0.5  # to the nearest edge
    ramp = np.clip(distance / ramp_px, 0, 1)
    ramp = 0.5 - 0.5 * np.cos(np.pi * ramp)
    return np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)


def process_full_photo(
    photo: np.ndarray, apply_fn: Callable[[np.ndarray], np.ndarray], aligner: FaceAligner | None = None
) -> tuple[np.ndarray, int]:
    """Detect every face, run `apply_fn` on each aligned crop ((S, S, 3) uint8 -> same), paste each back.

    Returns (new photo, number of faces); a photo with no face comes back unchanged with 0.
    """
    own = aligner is None
    aligner = aligner or FaceAligner()
    try:
        faces = aligner.detect(photo)
        result = _as_rgb(photo).copy()
        for face in faces:
            aligner.paste_back(result, face, apply_fn(face.crop.copy()), inplace=True)
        return result, len(faces)
    finally:
        if own:
            aligner.close()


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)

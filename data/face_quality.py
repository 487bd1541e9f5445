"""Is an aligned face crop worth keeping as a plain face? Sharpness, head pose and a perceptual hash.

All three work on the crops `FaceAligner` writes (eye line level, margin 0.4: the detector box is the
central 1/1.8 of the crop), so they measure the face, not the background:

- `sharpness(crop)`: variance of the Laplacian of the grey face box, at a fixed 256 px crop size, so the
  threshold does not move with the output size (a face blown up from a small photo or out of focus scores low);
- `head_pose(landmarks)`: yaw, pitch and roll in degrees from FaceMesh's 478 landmarks with depth (x, y, z in
  pixels, `FaceParser.landmarks(..., depth=True)`): the face's own axes, the eye corners (33 -> 263) and
  forehead -> chin (10 -> 152), read in 3D. MediaPipe's depth is flatter than a real head's: a face that looks
  turned 35-40 degrees reads about 25-30 (docs/decisions.md, collect_faces: --max-yaw);
- `perceptual_hash(crop, landmarks)`: a 143-bit DCT hash (pHash: the signs of the 12 x 12 lowest frequencies
  but the mean, against their median) of a 32 x 32 grey face registered on its eyes and mouth. Aligned crops all
  look alike at low frequencies, and the detector's box moves by a few pixels between a photo and its resized
  copy: the classic 64-bit hash of the crop put distinct faces 4 bits apart and copies up to 10. Registered
  on the landmarks, resized and re-encoded copies stay within 10 bits and distinct faces 20 or more apart
  (docs/decisions.md, collect_faces: --max-hash-distance). `hamming(hash, hashes)` counts differing bits.
"""

from __future__ import annotations

import cv2
import numpy as np

from data.face_parsing import LEFT_EYE, LOWER_LIP_OUTER, RIGHT_EYE, UPPER_LIP_OUTER

SHARPNESS_SIZE = 256  # crops are measured at this size, whatever size they are written at
# Forehead -> chin leans back in FaceMesh's depth on a face looking straight at the camera: the median raw pitch of
# the 400 frontal SCUT-FBP5500 faces of ../shared/data/faces is subtracted, so a level face reads about 0.
PITCH_OFFSET = 10.4
RIGHT_EYE_OUTER, LEFT_EYE_OUTER, FOREHEAD, CHIN = 33, 263, 10, 152
HASH_SIDE = 32  # the registered grey face's side before the DCT
HASH_FREQS = 12  # the lowest 12 x 12 frequencies, the mean left out: 143 bits
# Where the eye centres and the mouth centre go in the registered face, in fractions of its side.
HASH_ANCHORS = np.float32([[0.3, 0.35], [0.7, 0.35], [0.5, 0.75]])


def face_box(crop: np.ndarray, margin: float = 0.4) -> np.ndarray:
    """The detector box's part of an aligned crop: the central 1 / (1 + 2 margin) of each side."""
    size = crop.shape[0]
    half = size / (1 + 2 * margin) / 2
    lo, hi = int(round(size / 2 - half)), int(round(size / 2 + half))
    return crop[lo:hi, lo:hi]


def sharpness(crop: np.ndarray, margin: float = 0.4) -> float:
    """Variance of the Laplacian of the grey face box, the crop taken at SHARPNESS_SIZE (higher: sharper)."""
    crop = np.asarray(crop)
    if crop.shape[0] != SHARPNESS_SIZE:
        flags = cv2.INTER_AREA if crop.shape[0] > SHARPNESS_SIZE else cv2.INTER_CUBIC
        crop = cv2.resize(crop, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=flags)
    grey = cv2.cvtColor(face_box(crop, margin), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def head_pose(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from (478, 3) FaceMesh landmarks in pixels (x right, y down, z away).

    Yaw: the eye line's turn in depth (the sign follows FaceMesh's z); pitch: forehead -> chin's tilt in depth,
    less PITCH_OFFSET; roll: the eye line's tilt in the image (about 0 on an aligned crop).
    """
    points = np.asarray(landmarks, np.float64)
    if points.shape != (478, 3) and points.shape != (468, 3):
        raise ValueError(f"expected (478, 3) landmarks with depth, got {points.shape}")
    across = points[LEFT_EYE_OUTER] - points[RIGHT_EYE_OUTER]
    across /= max(np.linalg.norm(across), 1e-9)
    down = points[CHIN] - points[FOREHEAD]
    down -= (down @ across) * across  # perpendicular to the eye line
    down /= max(np.linalg.norm(down), 1e-9)
    yaw = np.degrees(np.arctan2(across[2], across[0]))
    pitch = np.degrees(np.arctan2(down[2], down[1])) - PITCH_OFFSET
    roll = np.degrees(np.arctan2(across[1], across[0]))
    return float(yaw), float(pitch), float(roll)


def perceptual_hash(crop: np.ndarray, landmarks: np.ndarray) -> str:
    """The face's DCT hash as hex: `crop` (S, S, 3) uint8 RGB, `landmarks` its FaceMesh points ((478, 2 or 3) pixels)."""
    marks = np.asarray(landmarks, np.float32)[:, :2]
    anchors = np.float32([marks[RIGHT_EYE].mean(0), marks[LEFT_EYE].mean(0),
                          marks[UPPER_LIP_OUTER + LOWER_LIP_OUTER].mean(0)])  # fmt: skip
    grey = cv2.cvtColor(np.asarray(crop), cv2.COLOR_RGB2GRAY)
    # blur to the registered size first (an area filter that survives the warp), then warp onto the anchors
    grey = cv2.GaussianBlur(grey, (0, 0), max(grey.shape[0] / HASH_SIDE / 2, 0.5))
    matrix = cv2.getAffineTransform(anchors, HASH_ANCHORS * HASH_SIDE)
    face = cv2.warpAffine(
        grey, matrix, (HASH_SIDE, HASH_SIDE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    low = cv2.dct(face.astype(np.float32))[:HASH_FREQS, :HASH_FREQS].flatten()[1:]
    return np.packbits(low > np.median(low)).tobytes().hex()


def hash_array(hashes: list[str]) -> np.ndarray:
    """(N, bytes) uint8 of hex hashes, for `hamming`."""
    width = (HASH_FREQS * HASH_FREQS - 1 + 7) // 8
    return np.array([np.frombuffer(bytes.fromhex(h), np.uint8) for h in hashes], np.uint8).reshape(-1, width)


def hamming(value: str, hashes: np.ndarray) -> np.ndarray:
    """Differing bits between one hash and each row of `hashes` (`hash_array`)."""
    differ = np.bitwise_xor(hashes, np.frombuffer(bytes.fromhex(value), np.uint8))
    return np.unpackbits(differ, axis=1).sum(1)

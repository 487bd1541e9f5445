"""A dense correspondence between two faces from their FaceMesh landmarks: a piecewise-affine warp.

    warp = FaceWarp(reference_landmarks, size)          # the triangulation lives on the reference (the mean face)
    to_face = warp.mapping(reference_points, face_points, out_shape)   # for each pixel of the face, where in the reference
    image_on_face = to_face.apply(image_in_reference)   # cv2.remap
    # the other direction: warp.mapping(face_points, reference_points, ...)

The points are FaceMesh's 468 mesh landmarks (the ten iris points move with the gaze and are left out) plus
eight anchors on the image border (corners and edge midpoints), so the map covers the whole image. A Delaunay
triangulation of the reference points gives the triangles; each triangle has its own affine map from the
destination face to the source face, and every destination pixel takes the map of the triangle it lies in
(a label image rasterised by OpenCV, then one vectorised gather and one `cv2.remap`).

**Folds.** Where a face turns away, or a hand or glasses move landmarks, a triangle can flip (its vertices
change their winding) or collapse. Its pixels have no single preimage: the map there is undefined. A triangle is
folded when, in either face, its signed area has the opposite sign of the reference's or is under `MIN_AREA_RATIO`
of it. Folded triangles are drawn last, over their neighbours, as invalid: `WarpMap.valid` is False there, and so
is the part of a neighbour they cover. Callers leave invalid pixels alone (the makeup draft adds nothing there),
and `WarpMap.folded_share(region)` says how much of a region is affected, so that a face folded past a limit can be
skipped with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from data.face_parsing import PIXEL_CENTRE  # pixel i's centre in the landmarks' continuous coordinates

MESH_POINTS = 468  # FaceMesh's mesh landmarks; 468-477 are the irises (refine_landmarks), which follow the gaze
MIN_AREA_RATIO = 0.05  # a triangle shrunk below this share of its reference area counts as folded
INVALID = -1  # label of pixels no valid triangle covers

# FaceMesh's left-right mirror: MIRROR[i] is the landmark that sits where landmark i would after flipping the face
# (the subject's left eye's corner 263 <-> the right's 33; the 28 points on the midline map to themselves; the
# irises 468-472 <-> 473-477). Found by matching each face's landmarks to their reflection about its own midline,
# pooled over the 400 faces of shared/data/faces (one assignment), then corrected so that it maps FaceMesh's
# tessellation onto itself: tests/test_face_warp.py checks it is an involution and a symmetry of the mesh (up to
# six quads whose diagonal FaceMesh draws the same way on both sides).
MIRROR = (
    0, 1, 2, 248, 4, 5, 6, 249, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 250, 251, 252, 253, 254, 255, 256,
    257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270, 271, 272, 273, 274, 275, 276, 277, 278,
    279, 280, 281, 282, 283, 284, 285, 286, 287, 288, 289, 290, 291, 292, 293, 294, 295, 296, 297, 298, 299, 300,
    301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312, 313, 314, 315, 316, 317, 318, 319, 320, 321, 322,
    323, 94, 324, 325, 326, 327, 328, 329, 330, 331, 332, 333, 334, 335, 336, 337, 338, 339, 340, 341, 342, 343,
    344, 345, 346, 347, 348, 349, 350, 351, 352, 353, 354, 355, 356, 357, 358, 359, 360, 361, 362, 363, 364, 365,
    366, 367, 368, 369, 370, 371, 372, 373, 374, 375, 376, 377, 378, 379, 151, 152, 380, 381, 382, 383, 384, 385,
    386, 387, 388, 389, 390, 164, 391, 392, 393, 168, 394, 395, 396, 397, 398, 399, 175, 400, 401, 402, 403, 404,
    405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418, 195, 419, 197, 420, 199, 200, 421, 422,
    423, 424, 425, 426, 427, 428, 429, 430, 431, 432, 433, 434, 435, 436, 437, 438, 439, 440, 441, 442, 443, 444,
    445, 446, 447, 448, 449, 450, 451, 452, 453, 454, 455, 456, 457, 458, 459, 460, 461, 462, 463, 464, 465, 466,
    467, 3, 7, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72,
    73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 95, 96, 97, 98, 99, 100,
    101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122,
    123, 124, 125, 126, 127, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144,
    145, 146, 147, 148, 149, 150, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 165, 166, 167, 169, 170,
    171, 172, 173, 174, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193,
    194, 196, 198, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219,
    220, 221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239, 240, 241,
    242, 243, 244, 245, 246, 247, 473, 476, 475, 474, 477, 468, 471, 470, 469, 472
)  # fmt: skip


def mirror_landmarks(landmarks: np.ndarray, width: float) -> np.ndarray:
    """The landmarks of the left-right flipped image (`image[:, ::-1]`), in FaceMesh's own order."""
    landmarks = np.asarray(landmarks, np.float64)
    flipped = landmarks[list(MIRROR[: len(landmarks)])].copy()
    flipped[:, 0] = width - flipped[:, 0]
    return flipped


def border_anchors(width: float, height: float) -> np.ndarray:
    """(8, 2) float64: the image's corners and edge midpoints, in pixel coordinates (x, y)."""
    x1, y1 = float(width), float(height)
    return np.array(
        [[0, 0], [x1 / 2, 0], [x1, 0], [x1, y1 / 2], [x1, y1], [x1 / 2, y1], [0, y1], [0, y1 / 2]], np.float64
    )


def warp_points(landmarks: np.ndarray, width: float, height: float) -> np.ndarray:
    """(478 or 468, 2) FaceMesh landmarks -> (476, 2): the mesh points, then the eight border anchors."""
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.ndim != 2 or landmarks.shape[1] != 2 or landmarks.shape[0] < MESH_POINTS:
        raise ValueError(f"expected (>= {MESH_POINTS}, 2) FaceMesh landmarks, got {landmarks.shape}")
    return np.concatenate([landmarks[:MESH_POINTS], border_anchors(width, height)])


def triangulate(points: np.ndarray) -> np.ndarray:
    """(T, 3) int32 Delaunay triangles of `points`, each wound so that its signed area is positive."""
    from scipy.spatial import Delaunay  # scipy: only the warp needs it, loaded here

    triangles = Delaunay(np.asarray(points, np.float64)).simplices.astype(np.int32)
    flip = signed_areas(points, triangles) < 0
    triangles[flip] = triangles[flip][:, [0, 2, 1]]
    return triangles


def signed_areas(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(T,) signed area of each triangle: positive for the winding `triangulate` gives, negative once flipped."""
    p = np.asarray(points, np.float64)[triangles]  # (T, 3, 2)
    u, v = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    return 0.5 * (u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0])


def triangle_affines(source: np.ndarray, destination: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(T, 2, 3) affine per triangle taking destination (x, y, 1) to source (x, y); degenerate ones are zero."""
    dst = np.concatenate([destination[triangles], np.ones((len(triangles), 3, 1))], axis=2)  # (T, 3, 3) rows [x y 1]
    src = source[triangles]  # (T, 3, 2)
    det = np.linalg.det(dst)
    ok = np.abs(det) > 1e-9
    affines = np.zeros((len(triangles), 3, 2))
    affines[ok] = np.linalg.solve(dst[ok], src[ok])  # dst @ A = src
    return affines.transpose(0, 2, 1)  # (T, 2, 3)


@dataclass
class WarpMap:
    """For each destination pixel, where to sample the source image (cv2.remap maps) and whether that is defined."""

    map_x: np.ndarray  # (H, W) float32
    map_y: np.ndarray  # (H, W) float32
    valid: np.ndarray  # (H, W) bool: inside an unfolded triangle
    folded_triangles: int

    def apply(self, image: np.ndarray, interpolation: int = cv2.INTER_LINEAR, fill: float = 0.0) -> np.ndarray:
        """`image` (source geometry, any channels, float or uint8) sampled at the destination's pixels; `fill` where
        the map is invalid or points outside the source."""
        out = cv2.remap(image, self.map_x, self.map_y, interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
        if not self.valid.all():
            out[~self.valid] = fill
        return out

    def folded_share(self, region: np.ndarray | None = None) -> float:
        """The share of `region`'s pixels (default: the whole image) where the map is undefined."""
        region = np.ones_like(self.valid) if region is None else np.asarray(region, bool)
        count = int(region.sum())
        return float((region & ~self.valid).sum()) / count if count else 0.0


class FaceWarp:
    """The triangulation of a reference face (its landmarks at `size`), shared by every warp between two faces."""

    def __init__(self, reference_landmarks: np.ndarray, size: tuple[int, int] | int):
        height, width = (size, size) if isinstance(size, int) else size
        self.reference = warp_points(reference_landmarks, width, height)
        self.triangles = triangulate(self.reference)
        self.reference_areas = signed_areas(self.reference, self.triangles)

    def folded(self, points: np.ndarray) -> np.ndarray:
        """(T,) bool: triangles flipped or collapsed in a face (`points` from `warp_points`) against the reference.

        Areas are compared as shares of the whole triangulation (the image, whose border the anchors span), so a
        face at another size than the reference's is judged alike."""
        areas = signed_areas(points, self.triangles)
        scale = np.abs(areas).sum() / np.abs(self.reference_areas).sum()
        return areas < MIN_AREA_RATIO * scale * self.reference_areas

    def mapping(self, source_points: np.ndarray, destination_points: np.ndarray, shape: tuple[int, int]) -> WarpMap:
        """The map that brings an image in the source face's geometry onto the destination face's.

        `source_points`, `destination_points`: (476, 2) from `warp_points` (each at its own image's size);
        `shape`: the destination image's (H, W). The inverse map is `mapping(destination, source, ...)`.
        """
        height, width = shape
        src, dst = np.asarray(source_points, np.float64), np.asarray(destination_points, np.float64)
        affines = triangle_affines(src, dst, self.triangles)  # (T, 2, 3): destination pixel -> source pixel
        folded = self.folded(src) | self.folded(dst)
        labels = np.full((height, width), INVALID, np.int32)
        # Unfolded triangles first, then the folded ones over them as invalid: where a flipped triangle overlaps
        # its neighbours, no pixel there has a single preimage. Corners in 1/16 px (cv2's fixed point).
        # Points are continuous coordinates (pixel i spans [i, i + 1], as MediaPipe's x * width); OpenCV puts pixel
        # i's centre at i: half a pixel off, both when rasterising and when sampling.
        corners = np.round((dst[self.triangles] - PIXEL_CENTRE) * 16).astype(np.int32)  # (T, 3, 2)
        for index in np.flatnonzero(~folded):
            cv2.fillConvexPoly(labels, corners[index], int(index), lineType=cv2.LINE_8, shift=4)
        for index in np.flatnonzero(folded):
            cv2.fillConvexPoly(labels, corners[index], INVALID, lineType=cv2.LINE_8, shift=4)
        valid = labels != INVALID
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + PIXEL_CENTRE  # pixel centres
        a = affines[np.maximum(labels, 0)]  # (H, W, 2, 3)
        map_x = a[..., 0, 0] * xs + a[..., 0, 1] * ys + a[..., 0, 2] - PIXEL_CENTRE
        map_y = a[..., 1, 0] * xs + a[..., 1, 1] * ys + a[..., 1, 2] - PIXEL_CENTRE
        map_x[~valid], map_y[~valid] = -1.0, -1.0
        return WarpMap(map_x.astype(np.float32), map_y.astype(np.float32), valid, int(folded.sum()))

"""Face parsing from MediaPipe FaceMesh landmarks, offline.

`FaceParser().parse(rgb)` finds the largest face (FaceMesh with `refine_landmarks=True`: 478 points,
irises included; the mediapipe 0.10.21 wheel ships the model, so no network) and returns a
`FaceParse` with

- `fine`: the MT makeup dataset's label convention (`FINE_LABELS`); this parser fills 0-9
  (background, skin, brows, eyes, nose, lips, mouth); 10-13 (hair, ears, neck) only arrive
  through the converters from hand-labelled maps,
- `makeup`: the makeup-region map of the paired dataset format (`data/paired.py`): 0 background,
  1 eye-makeup region, 2 lips, 3 skin,
- `landmarks`: (478, 2) float32 pixel coordinates (x, y).

Left/right follow the subject (left eye = the subject's left = the image's right), as MediaPipe's
`FACEMESH_LEFT_EYE` does. Region shapes are landmark polygons drawn as smooth closed splines, with
two additions that plain polygons miss: the brows are grown to the thickness hand labels give them,
and the forehead above the landmark oval (which stops well below the hairline) is added where its
colour matches a skin model fitted on the cheeks. Measured by `bench/face_parsing_eval.py`.

Converters `from_mt`, `from_celebamask` and `from_lapa` turn hand-labelled maps into the fine map,
and `makeup_regions(fine)` turns any fine map into the makeup map, so hand labels can replace the
parser anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FINE_LABELS: dict[str, int] = {
    "background": 0,
    "skin": 1,
    "l_brow": 2,
    "r_brow": 3,
    "l_eye": 4,
    "r_eye": 5,
    "nose": 6,
    "upper_lip": 7,
    "mouth": 8,
    "lower_lip": 9,
    "hair": 10,
    "l_ear": 11,
    "r_ear": 12,
    "neck": 13,
}
# Makeup-region labels, as data/paired.py (kept literal here so this module imports without torch).
MAKEUP_BACKGROUND, MAKEUP_EYE, MAKEUP_LIPS, MAKEUP_SKIN = 0, 1, 2, 3

# ---- MediaPipe FaceMesh landmark loops (canonical indices; "left" = the subject's left) ----------
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]  # fmt: skip
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
# Brows: the upper edge (outer -> inner) then the lower edge (inner -> outer) make one loop.
LEFT_BROW = [300, 293, 334, 296, 336, 285, 295, 282, 283, 276]
RIGHT_BROW = [70, 63, 105, 66, 107, 55, 65, 52, 53, 46]
UPPER_LIP_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
UPPER_LIP_INNER = [308, 415, 310, 311, 312, 13, 82, 81, 80, 191, 78]  # right -> left, closes the loop
LOWER_LIP_OUTER = [291, 375, 321, 405, 314, 17, 84, 181, 91, 146, 61]
LOWER_LIP_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
NOSE_POINTS = [168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 97, 326, 327, 64, 294, 48, 278, 115, 344, 220, 440,
               45, 275, 193, 417, 122, 351, 196, 419, 3, 248, 236, 456, 198, 420, 131, 360, 129, 358, 49,
               279, 102, 331]  # fmt: skip
# Oval points above the eyes: the forehead part of the landmark oval, moved up towards the hairline.
FOREHEAD_OVAL = [10, 338, 297, 332, 284, 251, 389, 162, 21, 54, 103, 67, 109]
CHEEK_PATCHES = [(50, 101, 118, 117, 123, 147, 187, 205, 36), (280, 330, 347, 346, 352, 376, 411, 425, 266)]

# ---- Region shaping: scale factors measured on the first 50 faces of the CelebAMask set ----------
EYE_SCALE = (
    0.95,
    0.95,
)  # (width, height) scale of the eye contour: it sits on the lid margin, just outside the opening
BROW_THICKEN = 0.1  # brow loop grown by this fraction of its length-normal thickness, both sides
LIP_SCALE = (1.0, 1.0)  # (width, height) growth of the outer lip contour about the mouth's centre
BROW_REFINE = 0.25  # colour refinement band around each brow, as a fraction of the brow's thickness
LIP_CHANNELS = [0, 1, 2]  # Lab channels that tell lips from skin
LIP_REFINE = 0.03  # colour refinement band around the lips, as a fraction of the mouth's width
FOREHEAD_LIFT = 0.55  # forehead search area: oval top raised by this fraction of brow-to-oval-top height
SKIN_COLOUR_THRESHOLD = 3.0  # Mahalanobis distance (Lab) under which a forehead pixel counts as skin
MOUTH_CORE = 0.04  # mouth-interior colour model: the inner-lip polygon shrunk by this fraction of mouth width
MOUTH_BAND = 0.03  # inner-lip edge band (fraction of mouth width) whose pixels may turn out to be lip
# MediaPipe's pixel coordinates (normalised x times width) put pixel i's centre at i + 0.5, cv2's
# rasteriser puts it at i: landmarks move by this much before any region is drawn.
PIXEL_CENTRE = 0.5


@dataclass
class FaceParse:
    fine: np.ndarray  # (H, W) uint8 FINE_LABELS
    makeup: np.ndarray  # (H, W) uint8: 0 bg, 1 eye-makeup region, 2 lips, 3 skin
    landmarks: np.ndarray  # (478, 2) float32 pixel (x, y)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------
def smooth_closed(points: np.ndarray, samples: int = 8) -> np.ndarray:
    """A closed Catmull-Rom spline through `points` (N, 2): rounded contours instead of polygon corners."""
    p = np.asarray(points, np.float64)
    p0, p1, p2, p3 = np.roll(p, 1, 0), p, np.roll(p, -1, 0), np.roll(p, -2, 0)
    t = np.linspace(0, 1, samples, endpoint=False)[:, None, None]  # (S, 1, 1)
    curve = 0.5 * (
        2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
    )  # (S, N, 2)
    return curve.transpose(1, 0, 2).reshape(-1, 2)


def fill_polygon(mask: np.ndarray, polygon: np.ndarray, value: int = 1) -> np.ndarray:
    """Fill a float polygon with sub-pixel precision (cv2 fixed point, 4 fractional bits)."""
    pts = np.round(np.asarray(polygon, np.float64) * 16).astype(np.int32)
    cv2.fillPoly(mask, [pts], int(value), lineType=cv2.LINE_8, shift=4)
    return mask


def scale_about_centre(points: np.ndarray, sx: float, sy: float | None = None) -> np.ndarray:
    """Scale points about their centroid, along the axes of the face (x along the eye line)."""
    sy = sx if sy is None else sy
    centre = points.mean(0)
    return centre + (points - centre) * np.array([sx, sy])


def _region(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    # Plain polygons: on the CelebAMask set a Catmull-Rom spline through the landmarks scored lower
    # (lips 0.718 vs 0.721, brows 0.596 vs 0.602 on the first 50 faces): it overshoots at the corners.
    return fill_polygon(np.zeros(shape, np.uint8), polygon).astype(bool)


def _in_face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The face's own axes: origin between the eyes, x along the eye line, y down the face."""
    left, right = landmarks[LEFT_EYE].mean(0), landmarks[RIGHT_EYE].mean(0)
    x_axis = (left - right) / max(np.linalg.norm(left - right), 1e-6)
    y_axis = np.array([-x_axis[1], x_axis[0]])
    return (left + right) / 2, x_axis, y_axis


def _scale_in_face_frame(points: np.ndarray, frame, sx: float, sy: float, centre=None) -> np.ndarray:
    _, x_axis, y_axis = frame
    centre = points.mean(0) if centre is None else centre
    rel = points - centre
    u, v = rel @ x_axis, rel @ y_axis
    return centre + np.outer(u * sx, x_axis) + np.outer(v * sy, y_axis)


# --------------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------------
def _brow_region(shape, landmarks: np.ndarray, loop: list[int]) -> np.ndarray:
    """Brow loop grown outward: the landmarks sit on the brow's centre-line, hand labels cover the hair."""
    pts = landmarks[loop].astype(np.float64)
    upper, lower = pts[:5], pts[5:][::-1]  # both outer -> inner
    thickness = np.linalg.norm(upper - lower, axis=1, keepdims=True)  # (5, 1)
    direction = (upper - lower) / np.maximum(thickness, 1e-6)
    grown_upper = upper + direction * thickness * BROW_THICKEN
    grown_lower = lower - direction * thickness * BROW_THICKEN
    return _region(shape, np.concatenate([grown_upper, grown_lower[::-1]]))


def _lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)


def _skin_model(lab: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and inverse covariance of the cheeks' Lab colour (the cheeks are rarely covered by hair)."""
    shape = lab.shape[:2]
    cheeks = np.zeros(shape, bool)
    for patch in CHEEK_PATCHES:
        hull = cv2.convexHull(landmarks[list(patch)].astype(np.float32))[:, 0]
        cheeks |= fill_polygon(np.zeros(shape, np.uint8), hull).astype(bool)
    samples = lab[cheeks]
    if len(samples) < 30:
        return None
    mean = samples.mean(0)
    cov = np.cov(samples.T) + np.diag([25.0, 4.0, 4.0])  # floor: flat-lit cheeks give a too-tight model
    return mean, np.linalg.inv(cov)


def _lifted_oval(landmarks: np.ndarray, frame) -> tuple[np.ndarray, float]:
    """The landmark oval with its forehead part raised towards the hairline, and the brow-to-oval-top height."""
    _, _, y_axis = frame
    brow_line = landmarks[LEFT_BROW + RIGHT_BROW].mean(0)
    oval_top = landmarks[10]
    height = float(np.dot(brow_line - oval_top, y_axis))  # brow-to-oval-top height (positive)
    lifted = landmarks[FACE_OVAL].astype(np.float64).copy()
    if height <= 1:
        return lifted, height
    for i, idx in enumerate(FACE_OVAL):
        if idx in FOREHEAD_OVAL:
            # Raise each point in proportion to how far above the brows it sits: the oval's top moves most.
            above = max(float(np.dot(brow_line - lifted[i], y_axis)), 0.0) / height
            lifted[i] -= y_axis * FOREHEAD_LIFT * height * above
    return lifted, height


def _forehead(lab: np.ndarray, landmarks: np.ndarray, oval: np.ndarray, frame) -> np.ndarray:
    """Skin above the landmark oval, up to the hairline: skin-coloured pixels connected to the oval."""
    shape = lab.shape[:2]
    lifted, height = _lifted_oval(landmarks, frame)
    if height <= 1:
        return np.zeros(shape, bool)
    search = _region(shape, lifted) & ~oval
    model = _skin_model(lab, landmarks)
    if model is None or not search.any():
        return np.zeros(shape, bool)
    mean, inv_cov = model
    lab = lab[search] - mean
    distance = np.sqrt(np.einsum("ni,ij,nj->n", lab, inv_cov, lab))
    candidate = np.zeros(shape, np.uint8)
    candidate[search] = distance < SKIN_COLOUR_THRESHOLD
    # Close small holes (freckles, highlights), then keep what touches the oval.
    size = max(3, int(height * 0.08) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    candidate = cv2.morphologyEx(candidate, cv2.MORPH_OPEN, kernel)
    candidate = cv2.morphologyEx(candidate, cv2.MORPH_CLOSE, kernel)
    seeds = cv2.dilate(oval.astype(np.uint8), np.ones((3, 3), np.uint8)) & candidate
    count, components = cv2.connectedComponents(candidate)
    touching = np.unique(components[seeds.astype(bool)])
    touching = touching[touching > 0]
    return np.isin(components, touching) & search


def _log_likelihood(values: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Log-likelihood of `values` (N, C) under a diagonal Gaussian fitted on `samples` (M, C)."""
    mean, var = samples.mean(0), samples.var(0) + 4.0
    return -0.5 * (((values - mean) ** 2) / var + np.log(var)).sum(-1)


def refine_mouth_interior(lab: np.ndarray, inner: np.ndarray, lips: np.ndarray, width: float) -> np.ndarray:
    """Shrink the inner-lip polygon to the teeth and the dark of an open mouth.

    FaceMesh's inner-lip landmarks sit a little inside the lips' wet edge when the mouth is open, so
    the polygon swallows a sliver of lip. In a band along the polygon's edge a pixel stays mouth
    interior only when its Lab colour is likelier under a model of the polygon's core than under one
    of the lips.
    """
    radius = max(int(round(width * MOUTH_CORE)), 1)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    core = cv2.erode(inner.astype(np.uint8), disk).astype(bool)
    if core.sum() < 10:  # a narrow opening: its own pixels are the best model there is
        core = inner
    lip_core = cv2.erode(lips.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if lip_core.sum() < 10:
        return inner
    depth = cv2.distanceTransform(inner.astype(np.uint8), cv2.DIST_L2, 3)
    band = inner & (depth <= max(width * MOUTH_BAND, 1.0))
    values = lab[band]
    out = inner.astype(np.uint8)
    out[band] = _log_likelihood(values, lab[core]) >= _log_likelihood(values, lab[lip_core])
    return (cv2.medianBlur(out * 255, 5) > 127) & inner


def _nearer_line(shape, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """True where a pixel is at least as close to polyline `first` as to polyline `second`."""
    dist = []
    for line in (first, second):
        canvas = np.ones(shape, np.uint8)
        cv2.polylines(canvas, [np.round(np.asarray(line) * 16).astype(np.int32)], False, 0, 1, cv2.LINE_8, 4)
        dist.append(cv2.distanceTransform(canvas, cv2.DIST_L2, 3))
    return dist[0] <= dist[1]


def refine_by_colour(feature: np.ndarray, region: np.ndarray, radius: int, allowed: np.ndarray) -> np.ndarray:
    """Move a landmark region's edge to where the colour changes.

    Near the edge, a pixel joins the region when its `feature` (Lab for lips, lightness for brows) is
    more likely under a diagonal Gaussian fitted on the region's core than under one fitted on the
    ring of pixels just outside.
    Landmarks give the shape; the colour edge gives the last few pixels that hand labels follow.
    """
    radius = max(int(radius), 1)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    region_u8 = region.astype(np.uint8)
    # The colour model comes from the region shrunk by a third of the band (lips are thin), the
    # band itself reaches `radius` outside and a third of it inside the landmark edge.
    inner_radius = max(radius // 3, 1)
    core = cv2.erode(region_u8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * inner_radius + 1,) * 2)).astype(bool)
    grown = cv2.dilate(region_u8, disk).astype(bool)
    ring = cv2.dilate(grown.astype(np.uint8), disk).astype(bool) & ~grown & allowed
    if core.sum() < 10 or ring.sum() < 10:
        return region
    feature = feature.reshape(*feature.shape[:2], -1).astype(np.float32)  # (H, W, C)

    band = grown & ~core & allowed
    values = feature[band]
    refined = core.copy()
    refined[band] = _log_likelihood(values, feature[core]) > _log_likelihood(values, feature[ring])
    refined = cv2.medianBlur(refined.astype(np.uint8) * 255, 5) > 127
    return (refined | core) & grown


def parse_landmarks(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(H, W) uint8 fine label map from an RGB image and its (478, 2) pixel landmarks.

    Landmarks are MediaPipe pixel coordinates (normalised x, y times width, height). All the work
    happens on a crop around the face (the landmarks plus the raised forehead, with a margin), which
    is converted to Lab once.
    """
    shape = image.shape[:2]
    landmarks = np.asarray(landmarks, np.float64) - PIXEL_CENTRE
    fine = np.zeros(shape, np.uint8)
    lifted, _ = _lifted_oval(landmarks, _in_face_frame(landmarks))
    points = np.concatenate([landmarks, lifted])
    low, high = points.min(0), points.max(0)
    margin = 8 + 0.1 * float((high - low).max())  # room for the colour-refinement bands
    x0, y0 = (max(int(np.floor(v - margin)), 0) for v in low)
    x1, y1 = min(int(np.ceil(high[0] + margin)) + 1, shape[1]), min(int(np.ceil(high[1] + margin)) + 1, shape[0])
    if x1 <= x0 or y1 <= y0:  # the face lies outside the image
        return fine
    fine[y0:y1, x0:x1] = _parse_crop(image[y0:y1, x0:x1], landmarks - np.array([x0, y0], np.float64))
    return fine


def _parse_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """parse_landmarks on a crop, with landmarks already in the crop's pixel-centre coordinates."""
    shape = image.shape[:2]
    frame = _in_face_frame(landmarks)
    lab = _lab(image)
    fine = np.zeros(shape, np.uint8)
    oval = _region(shape, landmarks[FACE_OVAL])
    fine[oval | _forehead(lab, landmarks, oval, frame)] = FINE_LABELS["skin"]
    nose_hull = cv2.convexHull(landmarks[NOSE_POINTS].astype(np.float32))[:, 0]
    fine[_region(shape, nose_hull)] = FINE_LABELS["nose"]

    eyes = np.zeros(shape, bool)
    for loop, label in ((LEFT_EYE, "l_eye"), (RIGHT_EYE, "r_eye")):
        eye = _region(shape, _scale_in_face_frame(landmarks[loop].astype(np.float64), frame, *EYE_SCALE))
        fine[eye] = FINE_LABELS[label]
        eyes |= eye
    for loop, label in ((LEFT_BROW, "l_brow"), (RIGHT_BROW, "r_brow")):
        brow = _brow_region(shape, landmarks, loop)
        if BROW_REFINE > 0:  # brows are darker than the skin around them: follow the lightness edge
            pts = landmarks[loop].astype(np.float64)
            thickness = float(np.linalg.norm(pts[:5] - pts[5:][::-1], axis=1).mean())
            brow = refine_by_colour(lab[..., 0], brow, thickness * BROW_REFINE, ~eyes)
        fine[brow & ~eyes] = FINE_LABELS[label]

    # The outer lip contour is scaled about the mouth's centre (hand labels run to the vermilion border).
    centre = landmarks[UPPER_LIP_OUTER + LOWER_LIP_OUTER].mean(0)
    outer_upper = _scale_in_face_frame(landmarks[UPPER_LIP_OUTER].astype(np.float64), frame, *LIP_SCALE, centre)
    outer_lower = _scale_in_face_frame(landmarks[LOWER_LIP_OUTER].astype(np.float64), frame, *LIP_SCALE, centre)
    inner = _region(shape, np.concatenate([landmarks[UPPER_LIP_INNER], landmarks[LOWER_LIP_INNER][1:-1]]))
    upper = _region(shape, np.concatenate([outer_upper, landmarks[UPPER_LIP_INNER]]))
    lower = _region(shape, np.concatenate([outer_lower, landmarks[LOWER_LIP_INNER]]))
    lips = (upper | lower) & ~inner
    width = float(np.linalg.norm(landmarks[61] - landmarks[291]))
    if LIP_REFINE > 0:  # lips are redder than the skin around them: follow the a* edge
        refined = refine_by_colour(lab[..., LIP_CHANNELS], lips, width * LIP_REFINE, ~inner)
        # New lip pixels take the label of the nearer lip; the mouth line splits them.
        dist_upper = cv2.distanceTransform((~upper).astype(np.uint8), cv2.DIST_L2, 3)
        dist_lower = cv2.distanceTransform((~lower).astype(np.uint8), cv2.DIST_L2, 3)
        fine[lips & ~refined] = FINE_LABELS["skin"]
        upper, lower = refined & (dist_upper <= dist_lower), refined & (dist_upper > dist_lower)
    if inner.sum() >= 20:  # an open mouth: give the lips back the sliver of lip the inner polygon took
        polygon = inner
        inner = refine_mouth_interior(lab, inner, (upper | lower) & ~inner, width)
        returned = polygon & ~inner
        nearer_upper = _nearer_line(shape, landmarks[UPPER_LIP_INNER], landmarks[LOWER_LIP_INNER])
        upper, lower = upper | (returned & nearer_upper), lower | (returned & ~nearer_upper)
    fine[upper & ~inner] = FINE_LABELS["upper_lip"]
    fine[lower & ~inner] = FINE_LABELS["lower_lip"]
    fine[inner] = FINE_LABELS["mouth"]
    return fine


# --------------------------------------------------------------------------------------------
# Makeup regions from any fine map
# --------------------------------------------------------------------------------------------
def _eye_makeup(eye: np.ndarray, blocked: np.ndarray) -> np.ndarray:
    """Eyelid and eyeliner area around one eye: mostly upward (the lid), a thin band below, a wing outward.

    Built from the eye's own size so it works on hand-labelled maps too; never enters the eyeball
    or the brows.
    """
    ys, xs = np.nonzero(eye)
    if len(xs) == 0:
        return np.zeros_like(eye)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    lid = max(int(round(max(height, width * 0.3) * 1.1)), 2)  # lid height ~ eye-opening height, at least
    side = max(int(round(width * 0.25)), 1)  # room for an eyeliner wing
    below = max(int(round(width * 0.08)), 1)
    # A kernel anchored `below` rows from its top: the dilation reaches `lid` rows up and `below` down.
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * side + 1, lid + below + 1))
    grown = cv2.dilate(eye.astype(np.uint8), kernel, anchor=(side, below)).astype(bool)
    return grown & ~eye & ~blocked


EYE_REGIONS = ("lid", "area")  # what the eye-makeup label (1) covers: see `makeup_regions`


def makeup_regions(fine: np.ndarray, eye_region: str = "lid") -> np.ndarray:
    """Fine map -> makeup map (0 bg, 1 eye-makeup region, 2 lips, 3 skin).

    Needs no landmarks: the eye-makeup region is grown from each eye label (up over the lid, a thin
    band under the lower lash line, out to the sides for a wing) and stops at the brows, so the same
    function serves the parser and hand-labelled maps. `eye_region="area"` makes label 1 the whole eye
    area instead: that lid region plus the brows and the eye openings, where a learned style also paints
    (darker brows, a lash line on the rim of the eye): FGMM and the amplifier leave label 0 untouched.
    """
    if eye_region not in EYE_REGIONS:
        raise ValueError(f"eye_region must be one of {', '.join(EYE_REGIONS)}, not {eye_region!r}")
    fine = np.asarray(fine)
    out = np.zeros(fine.shape, np.uint8)
    face_skin = np.isin(fine, [FINE_LABELS["skin"], FINE_LABELS["nose"]])
    out[face_skin] = MAKEUP_SKIN
    brows = np.isin(fine, [FINE_LABELS["l_brow"], FINE_LABELS["r_brow"]])
    eyes = np.isin(fine, [FINE_LABELS["l_eye"], FINE_LABELS["r_eye"]])
    for label in ("l_eye", "r_eye"):
        lid = _eye_makeup(fine == FINE_LABELS[label], brows | eyes)
        out[lid & (face_skin | (out == MAKEUP_SKIN))] = MAKEUP_EYE
    if eye_region == "area":
        out[brows | eyes] = MAKEUP_EYE
    out[np.isin(fine, [FINE_LABELS["upper_lip"], FINE_LABELS["lower_lip"]])] = MAKEUP_LIPS
    return out


# --------------------------------------------------------------------------------------------
# Converters from hand-labelled datasets
# --------------------------------------------------------------------------------------------
def _lookup(labels: np.ndarray, table: dict[int, int], name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name} label map must be (H, W), got shape {labels.shape}")
    lut = np.zeros(256, np.uint8)  # any id not in the table becomes background
    for src, dst in table.items():
        lut[src] = dst
    return lut[labels.astype(np.uint8)]


def from_mt(labels: np.ndarray) -> np.ndarray:
    """MT makeup dataset (BeautyGAN) labels are already the fine convention; ids above 13 -> background."""
    return _lookup(labels, {i: i for i in range(14)}, "MT")


# CelebAMask-HQ: 0 bg, 1 skin, 2 nose, 3 eyeglasses, 4 l_eye, 5 r_eye, 6 l_brow, 7 r_brow, 8 l_ear,
# 9 r_ear, 10 mouth, 11 u_lip, 12 l_lip, 13 hair, 14 hat, 15 earring, 16 necklace, 17 neck, 18 cloth.
# Eyeglasses, hat, jewellery and cloth are not face regions and become background.
CELEBAMASK_TO_FINE = {1: 1, 2: 6, 4: 4, 5: 5, 6: 2, 7: 3, 8: 11, 9: 12, 10: 8, 11: 7, 12: 9, 13: 10, 17: 13}


def from_celebamask(labels: np.ndarray) -> np.ndarray:
    return _lookup(labels, CELEBAMASK_TO_FINE, "CelebAMask-HQ")


# LaPa: 0 bg, 1 skin, 2 l_brow, 3 r_brow, 4 l_eye, 5 r_eye, 6 nose, 7 u_lip, 8 inner mouth, 9 l_lip, 10 hair:
# the same ids as the fine convention.
def from_lapa(labels: np.ndarray) -> np.ndarray:
    return _lookup(labels, {i: i for i in range(11)}, "LaPa")


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------
class FaceParser:
    """MediaPipe FaceMesh (static images, 478 landmarks) + landmark region shaping. Reusable; close() or `with`.

    `eye_region`: what the makeup map's eye label covers (`makeup_regions`): "lid" or "area"."""

    def __init__(self, min_detection_confidence: float = 0.5, max_num_faces: int = 4, eye_region: str = "lid"):
        if eye_region not in EYE_REGIONS:
            raise ValueError(f"eye_region must be one of {', '.join(EYE_REGIONS)}, not {eye_region!r}")
        self.min_detection_confidence = float(min_detection_confidence)
        self.max_num_faces = int(max_num_faces)
        self.eye_region = eye_region
        self._mesh = None

    def _get_mesh(self):
        if self._mesh is None:
            import mediapipe as mp  # imported here: slow, and only needed when parsing

            from common import QuietNativeStart

            self._mesh = QuietNativeStart(  # its start-up log lines: common.py
                lambda: mp.solutions.face_mesh.FaceMesh(
                    static_image_mode=True,
                    max_num_faces=self.max_num_faces,
                    refine_landmarks=True,
                    min_detection_confidence=self.min_detection_confidence,
                )
            )
        return self._mesh

    def landmarks(self, image: np.ndarray, depth: bool = False) -> list[np.ndarray]:
        """(478, 2) float32 pixel landmarks of every face found, largest first; `depth`: (478, 3), z in pixels
        too (MediaPipe's relative depth times the image width, larger = further away; for head pose)."""
        image = _as_rgb(image)
        height, width = image.shape[:2]
        result = self._get_mesh().process(image)
        faces = []
        for face in result.multi_face_landmarks or []:
            xyz = np.array([(p.x * width, p.y * height, p.z * width) for p in face.landmark], np.float32)
            faces.append(xyz if depth else np.ascontiguousarray(xyz[:, :2]))
        return sorted(faces, key=lambda xy: -cv2.contourArea(np.ascontiguousarray(xy[FACE_OVAL, :2])))

    def parse(self, image: np.ndarray) -> FaceParse | None:
        """Parse the largest face of an (H, W, 3) uint8 RGB image; None when no face is found."""
        image = _as_rgb(image)
        faces = self.landmarks(image)
        if not faces:
            return None
        fine = parse_landmarks(image, faces[0])
        return FaceParse(fine=fine, makeup=makeup_regions(fine, self.eye_region), landmarks=faces[0])

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def __enter__(self) -> FaceParser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)

"""Paint a makeup template onto an aligned face: the renderer behind stage 1's seed pairs.

Every component is a soft mask from the face's landmarks and a colour blend that keeps the skin's
and lips' own texture, so the result reads as makeup, not paint:

- lipstick: Lab blend; the lips' lightness detail (creases, highlights) is kept and only the mean
  lightness and the colour (a*, b*) move towards the lipstick; gloss brightens the lips' highlights;
- eyeliner: a tapered band along the upper lash line (thin at the inner corner), with a wing past
  the outer corner, anti-aliased and blended over the lashes;
- eyeshadow: multiply blend over the eye-makeup region, strongest at the lash line and fading up;
- blush: a wide Gaussian on each cheek, Lab colour shift, clipped to the face skin;
- skin smoothing: an edge-preserving (bilateral) filter blended over the face skin.

`render_makeup(image, parse, template)` returns the made-up image; `template_regions(template)` the
makeup-map labels the template may change (what stage 1's test checks the change against).
"""

from __future__ import annotations

import cv2
import numpy as np

from common import REPO_ROOT, load_config
from data.face_parsing import (
    FACE_OVAL,
    FINE_LABELS,
    LEFT_EYE,
    MAKEUP_EYE,
    MAKEUP_LIPS,
    MAKEUP_SKIN,
    RIGHT_EYE,
    FaceParse,
    fill_polygon,
    smooth_closed,
)
from errors import ConfigError

# Upper lid (lash line), inner corner -> outer corner.
RIGHT_LASH_LINE = [133, 173, 157, 158, 159, 160, 161, 246, 33]
LEFT_LASH_LINE = [362, 398, 384, 385, 386, 387, 388, 466, 263]
CHEEKS = (205, 425)  # right, left cheek centres (below the eyes, beside the nose)
WING_ANGLE = np.radians(22)  # the wing rises this far above the eye line


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)  # L 0..100, a/b about -128..127


def _rgb(lab: np.ndarray) -> np.ndarray:
    return np.clip(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB), 0, 1) * 255.0


def _colour_lab(colour) -> np.ndarray:
    return _lab(np.array(colour, np.float32).reshape(1, 1, 3))[0, 0]


def _blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(sigma, 0.3)) if sigma > 0 else mask.astype(np.float32)


def _face_axes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x along the eye line (towards the subject's left), y down the face."""
    left, right = landmarks[LEFT_EYE].mean(0), landmarks[RIGHT_EYE].mean(0)
    x_axis = (left - right) / max(float(np.linalg.norm(left - right)), 1e-6)
    return x_axis, np.array([-x_axis[1], x_axis[0]])


def _mix(base: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return base + (layer - base) * alpha[..., None]


def lipstick(rgb: np.ndarray, parse: FaceParse, color, opacity: float, gloss: float) -> np.ndarray:
    if opacity <= 0:
        return rgb
    size = rgb.shape[0]
    lips = np.isin(parse.fine, [FINE_LABELS["upper_lip"], FINE_LABELS["lower_lip"]])
    if not lips.any():
        return rgb
    # Eroded by a pixel, then feathered: the soft edge stays on the lips instead of spilling on skin.
    core = cv2.erode(lips.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
    alpha = np.minimum(_blur(core, size / 512), lips) * opacity
    lab = _lab(rgb)
    target = _colour_lab(color)
    painted = lab.copy()
    lip_mean = lab[lips].mean(0)
    # Lightness: move the mean towards the lipstick, keep 80% of the lips' own detail (texture, creases).
    painted[..., 0] = target[0] + (lab[..., 0] - lip_mean[0]) * 0.8
    painted[..., 1:] = target[1:] + (lab[..., 1:] - lip_mean[1:]) * 0.3
    if gloss > 0:
        detail = lab[..., 0] - cv2.GaussianBlur(lab[..., 0], (0, 0), size / 128)
        painted[..., 0] += gloss * 2.5 * np.clip(detail, 0, None)
    return _rgb(_mix(lab, painted, alpha))


def _liner_polygon(landmarks: np.ndarray, lash_line: list[int], thickness: float, wing: float) -> np.ndarray:
    """Closed outline of a tapered liner along the lash line with a wing past the outer corner."""
    points = landmarks[lash_line].astype(np.float64)  # inner -> outer
    x_axis, y_axis = _face_axes(landmarks)
    eye_width = float(np.linalg.norm(points[-1] - points[0]))
    outward = x_axis if np.dot(points[-1] - points[0], x_axis) > 0 else -x_axis
    up = -y_axis
    t = np.linspace(0.35, 1.0, len(points))[:, None] * thickness * eye_width  # taper inner -> outer
    lower = points + up * (-0.15 * t)  # hug the lash line, slightly below it
    upper = points + up * t
    tip = points[-1] + (outward * np.cos(WING_ANGLE) + up * np.sin(WING_ANGLE)) * wing * eye_width
    return np.concatenate([lower, [tip], upper[::-1]])


def eyeliner(rgb: np.ndarray, parse: FaceParse, color, opacity: float, thickness: float, wing: float) -> np.ndarray:
    if opacity <= 0 or thickness <= 0:
        return rgb
    size = rgb.shape[0]
    mask = np.zeros(rgb.shape[:2], np.uint8)
    for lash_line in (RIGHT_LASH_LINE, LEFT_LASH_LINE):
        fill_polygon(mask, smooth_closed(_liner_polygon(parse.landmarks, lash_line, thickness, wing), 4), 255)
    alpha = _blur(mask / 255.0, size / 700) * opacity
    eyes = np.isin(parse.fine, [FINE_LABELS["l_eye"], FINE_LABELS["r_eye"]])
    alpha[eyes] = 0  # the liner sits on the lashes, never on the eyeball
    layer = np.broadcast_to(np.array(color, np.float32), rgb.shape)
    # Multiply, then mix: dark liner keeps a trace of the lashes' texture underneath.
    return _mix(rgb, np.minimum(layer, rgb * np.array(color, np.float32) / 255.0 + layer * 0.5), alpha)


def eyeshadow(rgb: np.ndarray, parse: FaceParse, color, opacity: float, extent: float) -> np.ndarray:
    if opacity <= 0 or extent <= 0:
        return rgb
    size = rgb.shape[0]
    region = parse.makeup == MAKEUP_EYE
    if not region.any():
        return rgb
    _, y_axis = _face_axes(parse.landmarks)
    # Strongest at the lash line, fading up the lid: distance above each eye's centre line.
    weight = np.zeros(rgb.shape[:2], np.float32)
    ys, xs = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]].astype(np.float32)
    for eye in (LEFT_EYE, RIGHT_EYE):
        pts = parse.landmarks[eye]
        centre, width = pts.mean(0), float(np.ptp(pts[:, 0]))
        height_above = -((xs - centre[0]) * y_axis[0] + (ys - centre[1]) * y_axis[1])  # > 0 above the centre
        weight = np.maximum(weight, np.exp(-np.clip(height_above, 0, None) / (extent * 0.45 * width + 1e-6)))
    # Eroded, then feathered: soft edges that stay inside the eye-makeup region.
    sigma = size / 200
    inside = cv2.erode(region.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=max(int(sigma), 1))
    alpha = np.minimum(_blur(inside * weight, sigma), region) * opacity
    multiplied = rgb * (np.array(color, np.float32) / 255.0)
    return _mix(rgb, multiplied, alpha)


def blush(rgb: np.ndarray, parse: FaceParse, color, opacity: float, position, size: float) -> np.ndarray:
    if opacity <= 0 or size <= 0:
        return rgb
    landmarks = parse.landmarks
    x_axis, y_axis = _face_axes(landmarks)
    face_width = float(np.ptp(landmarks[FACE_OVAL] @ x_axis))
    ys, xs = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]].astype(np.float32)
    blob = np.zeros(rgb.shape[:2], np.float32)
    for index, side in zip(CHEEKS, (-1.0, 1.0)):
        centre = landmarks[index] + (side * position[0] * x_axis + position[1] * y_axis) * face_width
        d2 = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2
        blob = np.maximum(blob, np.exp(-d2 / (2 * (size * face_width / 2) ** 2)))
    skin = _blur(parse.makeup == MAKEUP_SKIN, rgb.shape[0] / 256) * (parse.makeup == MAKEUP_SKIN)
    alpha = blob * skin * opacity
    lab = _lab(rgb)
    target = _colour_lab(color)
    painted = lab.copy()
    painted[..., 1:] = target[1:] + (lab[..., 1:] - lab[..., 1:].mean((0, 1))) * 0.5
    painted[..., 0] = lab[..., 0] - 0.15 * (lab[..., 0] - target[0])
    return _rgb(_mix(lab, painted, alpha))


def smooth_skin(rgb: np.ndarray, parse: FaceParse, amount: float) -> np.ndarray:
    if amount <= 0:
        return rgb
    size = rgb.shape[0]
    skin = parse.makeup == MAKEUP_SKIN
    smoothed = cv2.bilateralFilter(np.clip(rgb, 0, 255).astype(np.uint8), 0, 18, size / 100).astype(np.float32)
    alpha = _blur(skin, size / 256) * skin * amount
    return _mix(rgb, smoothed, alpha)


def render_makeup(image: np.ndarray, parse: FaceParse, template) -> np.ndarray:
    """(H, W, 3) uint8 RGB face + its parse + a template (DictConfig or dict) -> made-up (H, W, 3) uint8."""
    out = image.astype(np.float32)
    out = smooth_skin(out, parse, float(template["skin_smoothing"]))
    b = template["blush"]
    out = blush(out, parse, b["color"], float(b["opacity"]), b["position"], float(b["size"]))
    s = template["eyeshadow"]
    out = eyeshadow(out, parse, s["color"], float(s["opacity"]), float(s["extent"]))
    e = template["eyeliner"]
    out = eyeliner(out, parse, e["color"], float(e["opacity"]), float(e["thickness"]), float(e["wing"]))
    lip = template["lipstick"]
    out = lipstick(out, parse, lip["color"], float(lip["opacity"]), float(lip["gloss"]))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def template_regions(template) -> list[int]:
    """Makeup-map labels (1 eyes, 2 lips, 3 skin) that the template's active components paint."""
    regions = set()
    if float(template["lipstick"]["opacity"]) > 0:
        regions.add(MAKEUP_LIPS)
    if float(template["eyeliner"]["opacity"]) > 0 or float(template["eyeshadow"]["opacity"]) > 0:
        regions.add(MAKEUP_EYE)
    if float(template["blush"]["opacity"]) > 0 or float(template["skin_smoothing"]) > 0:
        regions.add(MAKEUP_SKIN)
    return sorted(regions)


TEMPLATE_SCHEMA = REPO_ROOT / "configs" / "makeup" / "natural.yaml"


def load_template(path: str):
    try:
        return load_config(TEMPLATE_SCHEMA, config_path=path)
    except ConfigError as err:
        raise ConfigError(f"makeup template: {err}") from None

"""Makeup per region: `--intensity lips=1.2,eyes=0.6,skin=0`, as a per-pixel intensity map over the face.

A plain number (`--intensity 0.7`) means every region; then nothing is parsed and the output is the single
intensity's, bit for bit. Otherwise the face the model sees is parsed (data/face_parsing.py: MediaPipe FaceMesh
landmarks, the makeup map 0 background, 1 eyes, 2 lips, 3 skin, with the eye label covering the whole eye area:
lids, liner, lash line and brows) and each region's weight is feathered:

    w_lips, w_eyes = blur(dilate(region, r)), Gaussian of reach r  (exactly 1 on the region, 0 beyond 2r of it)
    w_skin = 1 - w_lips - w_eyes                                    (the rest of the face, and the background)
    I(x) = w_lips(x) x lips + w_eyes(x) x eyes + w_skin(x) x skin
    out = clamp(face + I(x) x change),  change = the model's output at intensity 1 minus the face

The background (hair, neck, what lies outside the face oval, an open mouth's teeth) takes the skin value: the
model's change there is the skin's (tone, blush spill), and so the map goes smoothly to the single intensity's
map as the three values approach each other (with 0 there, lips=eyes=skin=1.01 would drop the change outside
the face that 1 keeps). Lips and eyes never touch, so the weights sum to 1 without normalising them against
each other except where both feathers meet (then they are shared in proportion).
A face FaceMesh cannot find in its crop gets the skin value everywhere (the caller counts it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from deploy.makeup import INTENSITY_RANGE, check_intensity

REGIONS = ("lips", "eyes", "skin")
PARSE_SIZE = 256  # the crop is parsed at this side (FaceMesh itself runs at 192): the same map at any model size
FEATHER = 0.02  # the feather's reach r, as a fraction of the crop's side (5 px at 256: a 10 px ramp)
SNAP = 1e-5  # weights this close to 0 or 1 are made exactly 0 or 1 (float sums of a Gaussian kernel)
_MAKEUP_LABEL = {"eyes": 1, "lips": 2}  # data.face_parsing's MAKEUP_EYE, MAKEUP_LIPS


@dataclass(frozen=True)
class RegionIntensity:
    """The makeup strength of each region, 0 to 1.5 (1: the trained look)."""

    lips: float = 1.0
    eyes: float = 1.0
    skin: float = 1.0

    @property
    def uniform(self) -> float | None:
        """The single intensity when every region has the same (then no parse is needed), else None."""
        return self.lips if self.lips == self.eyes == self.skin else None

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in REGIONS}

    def summary(self) -> float | dict[str, float]:
        """What a summary.json says: the number, or the three values."""
        return self.uniform if self.uniform is not None else self.as_dict()

    def __str__(self) -> str:
        if self.uniform is not None:
            return f"{self.uniform:g}"
        return ",".join(f"{name}={value:g}" for name, value in self.as_dict().items())


def _level(value, name: str | None, where: str) -> float:
    high = INTENSITY_RANGE[1]
    what = f"{name}=" if name else ""
    try:
        if isinstance(value, bool):
            raise TypeError(value)
        level = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: {what}{value!r} is not a number (0 to {high:g}; one for every region, or "
            f"REGION=NUMBER,... with REGION one of {', '.join(REGIONS)})"
        ) from None
    return check_intensity(level, f"{where} {name}" if name else where)


def parse_intensity(value, where: str = "intensity") -> RegionIntensity:
    """A number (every region), a mapping {region: number} or a string "0.7" / "lips=1.2,eyes=0.6,skin=0";
    None is 1 (a config's default).

    Regions left out of a mapping keep 1, the trained look. ValueError, naming `where` and the valid region
    names, for an unknown region, a value that is not a number, or one outside 0 to 1.5."""
    if isinstance(value, RegionIntensity):
        return value
    if value is None:
        return RegionIntensity()
    if isinstance(value, str):
        text = value.strip()
        if "=" not in text and ":" not in text:
            level = _level(text, None, where)
            return RegionIntensity(level, level, level)
        pairs = {}
        for part in filter(None, (p.strip() for p in re.split(r"[,;]", text))):
            name, sep, number = part.partition("=") if "=" in part else part.partition(":")
            if not sep:
                raise ValueError(f"{where}: {part!r} is not REGION=NUMBER (REGION one of {', '.join(REGIONS)})")
            if name.strip() in pairs:
                raise ValueError(f"{where}: region {name.strip()!r} is given twice")
            pairs[name.strip()] = number.strip()
        value = pairs
    if isinstance(value, Mapping) or hasattr(value, "items"):  # a dict, or an OmegaConf DictConfig from YAML
        levels = {}
        for name, number in value.items():
            if name not in REGIONS:
                raise ValueError(f"unknown region {str(name)!r} in {where}; valid: {', '.join(REGIONS)}")
            levels[name] = _level(number, name, where)
        if not levels:
            raise ValueError(f"{where}: no region given (valid: {', '.join(REGIONS)})")
        return RegionIntensity(**levels)
    level = _level(value, None, where)
    return RegionIntensity(level, level, level)


def region_weights(makeup_map: np.ndarray, reach: float) -> dict[str, np.ndarray]:
    """Feathered weights {lips, eyes, skin} ((H, W) float32, summing to 1) from a makeup map (0 bg, 1 eyes,
    2 lips, 3 skin). Lips and eyes are 1 on their region and fall to 0 within 2 x `reach` pixels outside it;
    skin is the rest (the background included)."""
    reach = max(1, int(round(reach)))
    grow = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)  # square: the blur kernel's own footprint
    weights = {}
    for name, label in _MAKEUP_LABEL.items():
        mask = cv2.dilate((makeup_map == label).astype(np.uint8), grow).astype(np.float32)
        # Truncated at 2 sigma = reach: every tap of a pixel on the region lies in the grown mask (exactly 1).
        weights[name] = cv2.GaussianBlur(
            mask, (2 * reach + 1, 2 * reach + 1), reach / 2, borderType=cv2.BORDER_REPLICATE
        )
    total = weights["lips"] + weights["eyes"]
    over = total > 1
    for name in _MAKEUP_LABEL:  # where both feathers meet (rare), shared in proportion
        weights[name][over] /= total[over]
    for weight in weights.values():
        snap(weight)
    weights["skin"] = 1 - weights["lips"] - weights["eyes"]
    return weights


def snap(weight: np.ndarray) -> np.ndarray:
    """In place: values within SNAP of 0 or 1 made exactly 0 or 1 (so a region at 1 is the full makeup)."""
    weight[weight < SNAP] = 0
    weight[weight > 1 - SNAP] = 1
    return weight


def intensity_map(weights: Mapping[str, np.ndarray], levels: RegionIntensity) -> np.ndarray:
    """I(x) = sum over regions of w_r(x) x level_r, (H, W) float32."""
    skin = np.float32(levels.skin)
    return (
        skin
        + weights["lips"] * np.float32(levels.lips - levels.skin)
        + weights["eyes"] * np.float32(levels.eyes - levels.skin)
    ).astype(np.float32)


def resize_weights(weights: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Each weight map resized to (size, size): area averaging down, bilinear up; then snapped again."""
    out = {}
    for name in ("lips", "eyes"):
        weight = weights[name]
        if weight.shape != (size, size):
            shrink = weight.shape[0] > size
            weight = cv2.resize(weight, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out[name] = snap(np.clip(weight, 0, 1))
    out["skin"] = 1 - out["lips"] - out["eyes"]
    return out


class RegionParser:
    """A face crop -> its per-pixel intensity map at the model's size. One FaceMesh for a whole run; close() or
    `with`. `parsed` / `unparsed` count the faces FaceMesh found and did not find (those get the skin value)."""

    def __init__(self, parse_size: int = PARSE_SIZE, feather: float = FEATHER):
        from data.face_parsing import FaceParser  # mediapipe: slow to load, only needed per region

        self.parser = FaceParser(max_num_faces=1, eye_region="area")
        self.parse_size, self.feather = int(parse_size), float(feather)
        self.parsed = self.unparsed = 0
        self.seconds = 0.0

    def weights(self, face: np.ndarray, size: int) -> dict[str, np.ndarray] | None:
        """Feathered region weights of an (H, W, 3) uint8 RGB face crop at (size, size); None: no face found."""
        import time

        start = time.perf_counter()
        side = self.parse_size
        interpolation = cv2.INTER_AREA if min(face.shape[:2]) > side else cv2.INTER_LINEAR
        small = cv2.resize(np.ascontiguousarray(face), (side, side), interpolation=interpolation)
        parse = self.parser.parse(small)
        if parse is None:
            self.unparsed += 1
            self.seconds += time.perf_counter() - start
            return None
        weights = resize_weights(region_weights(parse.makeup, self.feather * side), size)
        self.parsed += 1
        self.seconds += time.perf_counter() - start
        return weights

    def intensity_map(self, face: np.ndarray, levels: RegionIntensity, size: int) -> np.ndarray:
        """(size, size) float32 I(x) for the face crop; the skin value everywhere when no face is found."""
        weights = self.weights(face, size)
        if weights is None:
            return np.full((size, size), levels.skin, np.float32)
        return intensity_map(weights, levels)

    def counts(self) -> dict:
        done = max(1, self.parsed + self.unparsed)
        return {"regions_parsed": self.parsed, "regions_not_found": self.unparsed,
                "regions_ms_per_face": round(1000 * self.seconds / done, 2)}  # fmt: skip

    def close(self) -> None:
        self.parser.close()

    def __enter__(self) -> RegionParser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

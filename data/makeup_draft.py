"""The makeup draft: the seed pairs' own change, carried onto a new face by its landmarks.

    seeds = seed_faces(pairs, size, parser)              # SeedFace: source, target, mask, landmarks
    draft = MakeupDraft.fit(seeds, DraftSettings())
    made_up, info = draft.apply(face, landmarks, mask)  # (H, W, 3) uint8; info: the share of the face the warp folded
    state = draft.state(); MakeupDraft.from_state(state)   # saved by stage 2 in dda_final.pt

Data Amplify Learning's amplifier has two jobs: *where* the makeup goes and *what* it is, and *how it adapts to
each face* (skin tone, light, lid shape). Five before/after pairs give the first job precisely, through geometry:
each seed's change (target against source) is brought into one reference face (the seeds' mean landmarks) by a
piecewise-affine warp on FaceMesh's landmarks (`data/face_warp.py`), the changes are combined there, and the
combination is warped onto each new face and applied inside that face's own makeup regions, so teeth, the eyes'
whites, hair and background stay the source's. The DDA can then be given the second job (`amplifier: draft+dda`,
`dda_training.py`).

How a change is measured and combined (`DraftSettings`, the `draft:` keys of configs/dda.yaml; the defaults were
measured: docs/decisions.md#dda-draft):
- `space`: `linear` multiplies in linear RGB (adds in log(linear + 1/255)), `lab` adds in CIELAB, `rgb` adds in
  sRGB. A shadow or a liner multiplies the light the skin reflects.
- `combine`: `mean`, or `median` (robust to a seed whose landmarks slipped).
- `mirror`: each seed also flipped left-right (FaceMesh's mirrored indices, `face_warp.MIRROR`): ten samples from
  five faces, and a symmetric makeup.
- Per region: a reference pixel combines, for the lips, only the samples whose lips cover it, so a new face's lip
  edge gets a lip's change, not an average with the skin beside it; each face pixel takes its own region's change.
- `adapt`: a change that depends on the face's own colour, at two scales (`_fit_adaptation`): the region's mean
  colour (a lipstick moves pale lips further than red ones) and the pixel's departure from it (a lipstick
  flattens the lips' own colour, a liner paints dark over any lash), with slopes fitted over the samples and shrunk
  toward the region's pooled slope (`adapt_ridge`); `adapt_blur` px of blur make the pixel term read colour, not
  JPEG noise. A mean of five other faces' changes alone does not know this face's lips.
- `smooth`: per region, a smooth field (Gaussian of that many px at 256) times an edge profile (the change's share
  at each depth inside the region, learned from the seeds) instead of the change pixel by pixel. A lip's change
  hardly depends on where on the lip a pixel is, except near its edge, and five mouth lines that the landmarks
  place a pixel apart would otherwise leave streaks of their own. Thin, placed makeup (a liner) keeps null.

Where a new face's warp is undefined (a folded triangle, `face_warp.WarpMap.valid`), the draft adds nothing; the
share of the face's makeup regions this covers is returned, so stage 3 can skip a face folded past a limit.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from data.face_warp import FaceWarp, mirror_landmarks, warp_points
from data.io import read_labels, read_rgb, resize_labels, resize_rgb
from errors import InputError

SPACES = ("rgb", "lab", "linear")
COMBINES = ("mean", "median")
REGION_LABELS = {"eyes": 1, "lips": 2, "skin": 3}  # the makeup mask's labels (data/paired.py)
LINEAR_OFFSET = 1.0 / 255.0  # log(linear + this): black stays finite, and the round trip stays exact
SLOPE_LIMIT = 1.0  # |slope| <= 1: at -1 the makeup paints over the face's own colour entirely


@dataclass
class DraftSettings:
    """The `draft:` keys of configs/dda.yaml (their comments say what each does)."""

    size: int | None = None  # the reference face's size in px (the seeds are resized to it); None: the seeds' own
    space: str = "linear"
    combine: str = "mean"
    mirror: bool = True
    adapt: bool = True
    adapt_blur: float = 1.0  # px at 256
    adapt_ridge: float = 1.0  # the pooled slope's weight, in samples' worth of the region's colour variance
    smooth: dict = field(default_factory=lambda: {"eyes": None, "lips": 3.0, "skin": None})

    @classmethod
    def from_config(cls, section) -> DraftSettings:
        """From the `draft:` config section (a mapping); a ValueError names the key that is wrong."""
        values = dict(section or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown key draft.{sorted(unknown)[0]} (expected {', '.join(cls.__dataclass_fields__)})")
        settings = cls(**values)
        settings.smooth = dict(settings.smooth or {})
        settings.check()
        return settings

    def check(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"draft.space must be one of {', '.join(SPACES)}, not {self.space!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"draft.combine must be one of {', '.join(COMBINES)}, not {self.combine!r}")
        if self.adapt_blur < 0 or self.adapt_ridge < 0:
            raise ValueError("draft.adapt_blur and draft.adapt_ridge must be >= 0")
        if self.size is not None and int(self.size) < 32:
            raise ValueError(f"draft.size must be null or at least 32 px, not {self.size}")
        for region, sigma in (self.smooth or {}).items():
            if region not in REGION_LABELS:
                raise ValueError(f"draft.smooth.{region}: not a region (expected {', '.join(REGION_LABELS)})")
            if sigma is not None and float(sigma) <= 0:
                raise ValueError(f"draft.smooth.{region} must be null or > 0, not {sigma}")


@dataclass
class SeedFace:
    name: str
    source: np.ndarray  # (S, S, 3) uint8
    target: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) uint8 makeup labels 0-3
    landmarks: np.ndarray  # (478, 2) FaceMesh, continuous pixel coordinates at S

    def mirrored(self) -> SeedFace:
        width = self.source.shape[1]
        return SeedFace(
            f"{self.name}_mirrored",
            np.ascontiguousarray(self.source[:, ::-1]),
            np.ascontiguousarray(self.target[:, ::-1]),
            np.ascontiguousarray(self.mask[:, ::-1]),
            mirror_landmarks(self.landmarks, width),
        )


# --------------------------------------------------------------------------------------------
# Colour spaces: a change is an addition in the encoded space
# --------------------------------------------------------------------------------------------
def encode(image: np.ndarray, space: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float32 in `space`, where the draft's change is added."""
    rgb = np.asarray(image, np.float32)
    if space == "rgb":
        return rgb
    if space == "lab":
        return cv2.cvtColor(rgb / 255.0, cv2.COLOR_RGB2LAB)
    if space == "linear":
        return np.log(_srgb_to_linear(rgb / 255.0) + LINEAR_OFFSET)
    raise ValueError(f"unknown colour space {space!r}")


def decode(values: np.ndarray, space: str) -> np.ndarray:
    """The inverse of `encode`, rounded and clipped to (H, W, 3) uint8."""
    if space == "rgb":
        rgb = values
    elif space == "lab":
        rgb = cv2.cvtColor(values.astype(np.float32), cv2.COLOR_LAB2RGB) * 255.0
    elif space == "linear":
        rgb = _linear_to_srgb(np.exp(values) - LINEAR_OFFSET) * 255.0
    else:
        raise ValueError(f"unknown colour space {space!r}")
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


def local_colour(encoded: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(encoded, (0, 0), sigma) if sigma > 0 else encoded


# --------------------------------------------------------------------------------------------
# The draft
# --------------------------------------------------------------------------------------------
@dataclass
class MakeupDraft:
    settings: DraftSettings
    reference: np.ndarray  # (478, 2) the seeds' mean landmarks at `size`
    size: int
    change: np.ndarray  # (3, S, S, 3) float32 per region (eyes, lips, skin): the combined change, in settings.space
    support: np.ndarray  # (3, S, S) float32 per region: how many samples had that region there
    slope: np.ndarray | None = None  # (3, S, S, 3) with adapt: d change / d (local colour - the face's region mean)
    deviation: np.ndarray | None = None  # (3, S, S, 3) with adapt: the samples' mean of that deviation
    face_slope: np.ndarray | None = None  # (3, 3) with adapt, per region and channel: d change / d region mean
    face_mean: np.ndarray | None = None  # (3, 3) with adapt: the samples' mean colour of each region
    profile: np.ndarray | None = None  # (3, PROFILE_BINS) the edge profile of smoothed regions (NaN: not smoothed)
    seeds: list[str] = field(default_factory=list)
    _warp: FaceWarp | None = field(default=None, repr=False, compare=False)

    @property
    def warp(self) -> FaceWarp:
        if self._warp is None:
            self._warp = FaceWarp(self.reference, self.size)
        return self._warp

    # ---- fitting ----------------------------------------------------------------------------
    @classmethod
    def fit(cls, seeds: list[SeedFace], settings: DraftSettings | None = None) -> MakeupDraft:
        """Each sample's change brought into the reference face, combined per region: a pixel of the reference
        takes, for the lips, only the samples whose lips cover it (so a new face's lip edge gets a lip's change,
        not an average with the skin beside it); where no sample has that region, the nearest ones fill in."""
        settings = settings or DraftSettings()
        settings.check()
        if not seeds:
            raise ValueError("the draft needs at least one seed pair")
        size = seeds[0].source.shape[0]
        for seed in seeds:
            if seed.source.shape[:2] != (size, size) or seed.target.shape != seed.source.shape:
                raise ValueError(f"seed '{seed.name}': every seed pair must be {size}x{size}, source and target alike")
        samples = seeds + ([s.mirrored() for s in seeds] if settings.mirror else [])
        reference = np.mean([s.landmarks[:, :2] for s in samples], axis=0)
        warp = FaceWarp(reference, size)
        changes, locals_, labels, means, depths = [], [], [], [], []
        for sample in samples:
            to_reference = warp.mapping(warp_points(sample.landmarks, size, size), warp.reference, (size, size))
            source, target = encode(sample.source, settings.space), encode(sample.target, settings.space)
            changes.append(to_reference.apply(target - source))
            locals_.append(to_reference.apply(local_colour(source, settings.adapt_blur)))
            label = to_reference.apply(sample.mask, interpolation=cv2.INTER_NEAREST)
            labels.append(np.where(to_reference.valid, label, 0))
            means.append(region_means(source, sample.mask))
            depths.append(to_reference.apply(region_depth(sample.mask)))
        changes, locals_, labels, means, depths = (np.stack(v) for v in (changes, locals_, labels, means, depths))
        profile = np.full((len(REGION_LABELS), PROFILE_BINS), np.nan, np.float32)
        fields: dict[str, list] = {"change": [], "support": [], "slope": [], "deviation": [], "face_slope": [],
                                   "face_mean": []}  # fmt: skip
        for index, label in enumerate(REGION_LABELS.values()):
            weight = (labels == label).astype(np.float32)  # (K, S, S): the samples whose region covers the pixel
            support = weight.sum(0)
            sigma = settings.smooth.get(list(REGION_LABELS)[index])
            if sigma is None:
                change = _combine(changes, weight, settings.combine)
            else:
                sigma = float(sigma) * size / 256
                profile[index] = _edge_profile(changes, depths, weight)
                change = _profiled_field(changes, depths, weight, profile[index], sigma)
            fields["change"].append(_fill(change, support))
            fields["support"].append(support)
            if settings.adapt:
                fit = _fit_adaptation(changes, locals_, means[:, index], weight, settings.adapt_ridge)
                if sigma is not None:
                    fit["slope"], fit["deviation"] = (_smooth(fit[k], support, sigma) for k in ("slope", "deviation"))
                fields["slope"].append(_fill(fit["slope"], support))
                fields["deviation"].append(_fill(fit["deviation"], support))
                fields["face_slope"].append(fit["face_slope"])
                fields["face_mean"].append(fit["face_mean"])
        stacked = {k: np.stack(v).astype(np.float32) if v else None for k, v in fields.items()}
        return cls(settings, reference, size, stacked["change"], stacked["support"], stacked["slope"],
                   stacked["deviation"], stacked["face_slope"], stacked["face_mean"], profile,
                   seeds=[s.name for s in seeds], _warp=warp)  # fmt: skip

    # ---- applying -----------------------------------------------------------------------------
    def apply(
        self,
        image: np.ndarray,
        landmarks: np.ndarray,
        mask: np.ndarray,
        region_weights: dict[str, float] | None = None,
    ) -> tuple[np.ndarray, dict]:
        """(H, W, 3) uint8 face, its (478, 2) landmarks and (H, W) makeup labels -> the drafted face, and
        {"folded_share": share of the makeup regions where the warp is undefined (left as they were)}.

        Each pixel takes its own region's change. `region_weights` ({eyes, lips, skin}, default 1 each) scale it;
        background stays the source exactly, and so does any region of weight 0.
        """
        height, width = image.shape[:2]
        mask = np.asarray(mask)
        to_face = self.warp.mapping(self.warp.reference, warp_points(landmarks, width, height), (height, width))
        weight = region_weight_map(mask, region_weights) * to_face.valid
        folded = to_face.folded_share(mask > 0)
        if not weight.any():
            return np.array(image, copy=True), {"folded_share": folded}
        encoded = encode(image, self.settings.space)
        change = self._on_face(self.change, to_face, mask)
        if self.profile is not None and not np.isnan(self.profile).all():  # smoothed regions: times the edge profile
            depth_bin = np.clip(region_depth(mask) * (256 / width), 0, PROFILE_BINS - 1).astype(np.int64)
            for index, label in enumerate(REGION_LABELS.values()):
                if not np.isnan(self.profile[index]).any():
                    inside = mask == label
                    change[inside] *= self.profile[index][depth_bin[inside]][:, None]
        if self.slope is not None:  # how this face's own colours move the change (`_fit_adaptation`)
            means = region_means(encoded, mask)  # (3, 3)
            face_term = self.face_slope * (means - self.face_mean)  # (3 regions, 3 channels)
            own_mean = np.zeros_like(encoded)
            for index, label in enumerate(REGION_LABELS.values()):
                inside = mask == label
                change[inside] += face_term[index]
                own_mean[inside] = means[index]
            local = local_colour(encoded, self.settings.adapt_blur * width / self.size)
            deviation = self._on_face(self.deviation, to_face, mask)
            change += self._on_face(self.slope, to_face, mask) * (local - own_mean - deviation)
        out = decode(encoded + change * weight[..., None], self.settings.space)
        keep = weight == 0
        out[keep] = np.asarray(image)[keep]  # exactly the source where no makeup goes (no colour round trip)
        return out, {"folded_share": folded}

    def _on_face(self, fields: np.ndarray, to_face, mask: np.ndarray) -> np.ndarray:
        """(3, S, S, C) per-region fields -> (H, W, C): each face pixel from its own region's field."""
        regions, _, _, channels = fields.shape
        stacked = to_face.apply(np.ascontiguousarray(fields.transpose(1, 2, 0, 3).reshape(self.size, self.size, -1)))
        stacked = stacked.reshape(*mask.shape, regions, channels)
        out = np.zeros((*mask.shape, channels), np.float32)
        for index, label in enumerate(REGION_LABELS.values()):
            inside = mask == label
            out[inside] = stacked[inside, index]
        return out

    # ---- saving -------------------------------------------------------------------------------
    def state(self) -> dict:
        """Plain tensors-and-numbers form, for a torch checkpoint (`common.save_checkpoint`)."""
        import torch  # the checkpoint's format; the draft itself is numpy

        arrays = {"reference": self.reference, "change": self.change, "support": self.support, "slope": self.slope,
                  "deviation": self.deviation, "face_slope": self.face_slope, "face_mean": self.face_mean,
                  "profile": self.profile}  # fmt: skip
        state = {k: None if v is None else torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        return state | {"settings": asdict(self.settings), "size": self.size, "seeds": list(self.seeds)}

    @classmethod
    def from_state(cls, state: dict) -> MakeupDraft:
        def array(key):
            value = state.get(key)
            return None if value is None else np.asarray(value.numpy() if hasattr(value, "numpy") else value)

        return cls(DraftSettings(**state["settings"]), array("reference"), int(state["size"]), array("change"),
                   array("support"), array("slope"), array("deviation"), array("face_slope"), array("face_mean"),
                   array("profile"), list(state.get("seeds", [])))  # fmt: skip


def region_weight_map(mask: np.ndarray, region_weights: dict[str, float] | None = None) -> np.ndarray:
    """(H, W) float32: each makeup label's weight (default 1), 0 on the background."""
    weights = {name: 1.0 for name in REGION_LABELS} | {k: v for k, v in (region_weights or {}).items() if v is not None}
    table = np.zeros(256, np.float32)
    for name, label in REGION_LABELS.items():
        table[label] = float(weights[name])
    return table[np.asarray(mask, np.uint8)]


def _combine(changes: np.ndarray, weight: np.ndarray, how: str) -> np.ndarray:
    """(K, S, S, 3) samples and (K, S, S) 0/1 weights -> (S, S, 3); 0 where no sample counts."""
    if how == "median":
        masked = np.where(weight[..., None] > 0, changes, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: no sample there
            combined = np.nanmedian(masked, axis=0)
        return np.nan_to_num(combined, nan=0.0).astype(np.float32)
    w = weight[..., None]
    return ((changes * w).sum(0) / np.maximum(w.sum(0), 1.0)).astype(np.float32)


FILL_SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # px: ever wider neighbourhoods fill a region's field outward


def _fill(values: np.ndarray, support: np.ndarray) -> np.ndarray:
    """(S, S, C) field defined where `support` > 0 -> defined everywhere: each empty pixel takes the
    support-weighted mean of the smallest neighbourhood (Gaussian of FILL_SIGMAS) that reaches a defined one."""
    values, defined = values.astype(np.float32), support > 0
    if defined.all() or not defined.any():
        return values
    out, todo = values.copy(), ~defined
    weight = defined.astype(np.float32)
    for sigma in FILL_SIGMAS:
        num = cv2.GaussianBlur(values * weight[..., None], (0, 0), sigma)
        den = cv2.GaussianBlur(weight, (0, 0), sigma)
        reached = todo & (den > 1e-3)
        out[reached] = num[reached] / den[reached, None]
        todo &= ~reached
        if not todo.any():
            break
    out[todo] = 0.0
    return out


PROFILE_BINS = 8  # edge-profile bins: depth inside the region 0-1, 1-2, ..., 7+ px at 256


def region_depth(mask: np.ndarray) -> np.ndarray:
    """(H, W) float32: each pixel's distance to the edge of its own makeup region (1 at the edge), 0 on background."""
    mask = np.asarray(mask)
    depth = np.zeros(mask.shape, np.float32)
    for label in REGION_LABELS.values():
        inside = mask == label
        if inside.any():
            padded = np.pad(inside.astype(np.uint8), 1)  # the image border is an edge too
            depth[inside] = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1][inside]
    return depth


def _edge_profile(changes, depths, weight) -> np.ndarray:
    """(PROFILE_BINS,): the change's share at each depth inside the region, relative to each sample's deep change
    (its mean change where the depth is PROFILE_BINS or more; all its pixels when the region is thinner)."""
    w = weight[..., None]
    scale = depths.shape[1] / 256
    bins = np.clip(depths / scale, 0, PROFILE_BINS - 1).astype(np.int64)  # (K, S, S)
    num, den = np.zeros(PROFILE_BINS), np.zeros(PROFILE_BINS)
    for k in range(len(changes)):
        region = weight[k] > 0
        deep = region & (bins[k] == PROFILE_BINS - 1)
        deep = deep if deep.sum() >= 10 else region
        if not deep.any():
            continue
        core = changes[k][deep].mean(0)  # (3,)
        along = (changes[k] * w[k] * core).sum(-1)  # (S, S): projection on the deep change
        np.add.at(num, bins[k][region], along[region])
        np.add.at(den, bins[k][region], float(core @ core))
    profile = np.where(den > 0, num / np.maximum(den, 1e-9), 1.0)
    return np.clip(profile, 0.0, 1.5).astype(np.float32)


def _profiled_field(changes, depths, weight, profile, sigma: float) -> np.ndarray:
    """The smooth field F minimising sum_k (change_k - h(depth_k) F)^2 locally (a Gaussian of `sigma`): normalised
    convolution with the profile's weights."""
    scale = depths.shape[1] / 256
    h = profile[np.clip(depths / scale, 0, PROFILE_BINS - 1).astype(np.int64)] * weight  # (K, S, S)
    num = cv2.GaussianBlur((changes * h[..., None]).sum(0), (0, 0), sigma)
    den = cv2.GaussianBlur((h * h).sum(0), (0, 0), sigma)
    return np.where(den[..., None] > 1e-6, num / np.maximum(den, 1e-6)[..., None], 0.0).astype(np.float32)


def _smooth(values: np.ndarray, support: np.ndarray, sigma: float) -> np.ndarray:
    weight = (support > 0).astype(np.float32)
    num = cv2.GaussianBlur(values * weight[..., None], (0, 0), sigma)
    den = cv2.GaussianBlur(weight, (0, 0), sigma)
    return np.where(den[..., None] > 1e-6, num / np.maximum(den, 1e-6)[..., None], 0.0).astype(np.float32)


def region_means(encoded: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(3 regions, 3 channels): the mean encoded colour of each makeup region of a face (0 for a missing one)."""
    out = np.zeros((len(REGION_LABELS), 3), np.float32)
    for index, label in enumerate(REGION_LABELS.values()):
        inside = np.asarray(mask) == label
        if inside.any():
            out[index] = encoded[inside].mean(0)
    return out


def _fit_adaptation(changes, locals_, means, weight, ridge: float) -> dict:
    """How a region's change depends on the face's own colour, at two scales, per channel:

        change_k(x) = c(x) + face_slope (m_k - face_mean) + slope(x) (local_k(x) - m_k - deviation(x))

    with m_k sample k's mean colour over the region (face level: a lipstick over pale lips moves them further) and
    local_k(x) - m_k the pixel's own departure from it (pixel level: a liner paints dark over any lash, a lipstick
    flattens the lips' colour). `face_slope` and the region's pooled pixel slope are one least-squares fit over every
    (sample, pixel) of the region; `slope(x)` is then a ridge regression at each pixel, shrunk toward the pooled
    slope with `ridge` samples' worth of the region's mean variance. Slopes are clipped to +-SLOPE_LIMIT.
    """
    w = weight[..., None]  # (K, S, S, 1)
    count = np.maximum(w.sum(0), 1.0)
    inside = weight.sum(0) > 0
    face_mean = means.mean(0)  # (3,)
    departure = locals_ - means[:, None, None, :]  # (K, S, S, 3): local colour - the sample's region mean
    deviation = (departure * w).sum(0) / count
    v = (departure - deviation) * w
    y = (changes - (changes * w).sum(0) / count) * w
    u = (means - face_mean)[:, None, None, :] * w  # face level, (K, S, S, 3)
    face_slope, pooled = np.zeros(3), np.zeros(3)
    if inside.any():
        for channel in range(3):
            features = np.stack([u[..., channel][:, inside].ravel(), v[..., channel][:, inside].ravel()], 1)
            coef, *_ = np.linalg.lstsq(features, y[..., channel][:, inside].ravel(), rcond=None)
            face_slope[channel], pooled[channel] = np.clip(coef, -SLOPE_LIMIT, SLOPE_LIMIT)
    y = y - face_slope * u
    sxy, sxx = (v * y).sum(0), (v * v).sum(0)  # (S, S, 3)
    prior = ridge * sxx[inside].sum(0) / max(float(weight.sum()), 1.0) if inside.any() else np.zeros(3)
    slope = np.where(inside[..., None], (sxy + prior * pooled) / np.maximum(sxx + prior, 1e-6), 0.0)
    return {"slope": np.clip(slope, -SLOPE_LIMIT, SLOPE_LIMIT), "deviation": deviation,
            "face_slope": face_slope, "face_mean": face_mean}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Seeds from a pair folder, and each seed drafted from the others
# --------------------------------------------------------------------------------------------
def seed_faces(pairs, size: int | None, parser) -> list[SeedFace]:
    """SeedFace per pair (`data.paired.Pair`: source, target and mask paths), at `size` (None: the first source's),
    with FaceMesh landmarks from `parser` (`data.face_parsing.FaceParser`) on the source. A pair without a mask gets
    its parse's; a face with no landmarks is an InputError that names it."""
    faces = []
    for pair in pairs:
        source, target = read_rgb(pair.source), read_rgb(pair.target)
        size = size or source.shape[0]
        source, target = np.asarray(resize_rgb(source, size)), np.asarray(resize_rgb(target, size))
        parse = parser.parse(source)
        if parse is None:
            raise InputError(
                f"seed pair '{pair.name}': the face parser finds no landmarks on {pair.source}: the draft places the "
                "makeup by them (use a clearer, frontal photo for this seed, or leave it out)"
            )
        mask = parse.makeup if pair.mask is None else np.asarray(resize_labels(read_labels(pair.mask), size))
        faces.append(SeedFace(pair.name, source, target, np.asarray(mask, np.uint8), parse.landmarks))
    return faces


def leave_one_out(seeds: list[SeedFace], settings: DraftSettings) -> dict[str, tuple[np.ndarray, float]]:
    """Each seed drafted from the other seeds (and their mirrors): name -> (drafted source, folded share). These are
    the draft's real errors, which the DDA learns to correct (`amplifier: draft+dda`)."""
    if len(seeds) < 2:
        raise ValueError("leave-one-out drafts need at least two seed pairs")
    out = {}
    for index, seed in enumerate(seeds):
        draft = MakeupDraft.fit(seeds[:index] + seeds[index + 1 :], settings)
        made_up, info = draft.apply(seed.source, seed.landmarks, seed.mask)
        out[seed.name] = (made_up, info["folded_share"])
    return out

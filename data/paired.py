"""The paired dataset format every stage reads or writes.

    ROOT/source/NAME.{png,jpg}   the plain face
    ROOT/target/NAME.{png,jpg}   the same face with makeup
    ROOT/mask/NAME.png           optional uint8 makeup-region labels (see MAKEUP_LABELS)

Pairs match by NAME. Bad data is reported by name and skipped; a missing or empty dataset raises
`DatasetError` before anything is built.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from common import atomic_write_text
from data.io import ImageReadError, list_images, read_labels, read_rgb, resize_labels, resize_rgb
from errors import InputError

# The makeup-region map (the `mask/` folder): what FGMM weights and the eyeliner loss focuses on.
BACKGROUND, EYE, LIPS, SKIN = 0, 1, 2, 3
MAKEUP_LABELS = {"background": BACKGROUND, "eyes": EYE, "lips": LIPS, "skin": SKIN}


class DatasetError(InputError):
    """A dataset that cannot be used at all (missing folder, no pairs). The message names the path."""


@dataclass
class Pair:
    name: str
    source: Path
    target: Path
    mask: Path | None = None


@dataclass
class ScanResult:
    pairs: list[Pair]
    skipped: list[str] = field(default_factory=list)  # one line per skipped file: path and reason
    warnings: list[str] = field(default_factory=list)  # kept pairs with a problem (e.g. unreadable mask)


def _by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in list_images(folder):
        found.setdefault(path.stem, path)  # NAME.png wins over NAME.jpg by sort order
    return found


def _check_readable(path: Path) -> str | None:
    try:
        read_labels(path) if path.parent.name == "mask" else read_rgb(path)
    except ImageReadError as err:
        return str(err)
    return None


def scan_pairs(root: str | os.PathLike, verify: bool = True, workers: int = 4) -> ScanResult:
    """Match source/target/mask by name. With `verify`, decode every file once to catch corrupt ones."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    source_dir, target_dir, mask_dir = root / "source", root / "target", root / "mask"
    for folder in (source_dir, target_dir):
        if not folder.is_dir():
            raise DatasetError(f"dataset folder {root} has no {folder.name}/ subfolder (expected source/ and target/)")
    sources, targets = _by_stem(source_dir), _by_stem(target_dir)
    masks = _by_stem(mask_dir) if mask_dir.is_dir() else {}

    result = ScanResult(pairs=[])
    for name in sorted(set(sources) - set(targets)):
        result.skipped.append(f"{sources[name]}: no matching target/{name}.*")
    for name in sorted(set(targets) - set(sources)):
        result.skipped.append(f"{targets[name]}: no matching source/{name}.*")
    candidates = [Pair(n, sources[n], targets[n], masks.get(n)) for n in sorted(set(sources) & set(targets))]

    if verify and candidates:
        files = [p for pair in candidates for p in (pair.source, pair.target, pair.mask) if p is not None]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            errors = dict(zip(files, pool.map(_check_readable, files)))
        kept = []
        for pair in candidates:
            bad = [errors[p] for p in (pair.source, pair.target) if errors[p]]
            if bad:
                result.skipped.extend(bad)
                continue
            if pair.mask is not None and errors[pair.mask]:
                result.warnings.append(f"{errors[pair.mask]} (pair {pair.name} kept without a mask)")
                pair.mask = None
            kept.append(pair)
        candidates = kept
    result.pairs = candidates
    if not result.pairs:
        detail = f"; {len(result.skipped)} file(s) skipped, e.g. {result.skipped[0]}" if result.skipped else ""
        raise DatasetError(f"no usable pairs in {root} (expected source/NAME.png and target/NAME.png){detail}")
    return result


def split_names(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split from the seed: the same names and seed, the same split."""
    ordered = sorted(names)
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_val = int(round(len(ordered) * val_fraction))
    if val_fraction > 0 and len(ordered) > 1:
        n_val = min(max(n_val, 1), len(ordered) - 1)
    val = sorted(ordered[i] for i in order[:n_val])
    train = sorted(ordered[i] for i in order[n_val:])
    return train, val


def write_split(path: str | os.PathLike, train: list[str], val: list[str], seed: int) -> None:
    atomic_write_text(path, json.dumps({"seed": seed, "train": train, "val": val}, indent=1))


class JointAffine:
    """One random similarity transform applied alike to a source, its target and its mask.

    With five seed pairs the DDA sees five lip positions and sizes; small random shifts, turns and
    zooms show it the same makeup on faces placed as the aligner places unseen ones (their crops vary
    by a few per cent in scale and position and a few degrees in roll). Images are resampled
    bilinearly with mirrored borders, the mask by nearest label with background outside.

    rotate_deg: turn up to +-this; scale: zoom by 1 +- this; shift: move up to +-this fraction of
    the side; probability: share of samples transformed at all.
    """

    def __init__(self, rotate_deg: float = 0.0, scale: float = 0.0, shift: float = 0.0, probability: float = 1.0):
        for key, value in (("rotate_deg", rotate_deg), ("scale", scale), ("shift", shift)):
            if value < 0:
                raise ValueError(f"affine {key} must be >= 0, got {value}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"affine probability must be in [0, 1], got {probability}")
        if scale >= 1.0:
            raise ValueError(f"affine scale must be < 1 (a zoom of 1 +- scale), got {scale}")
        self.rotate_deg, self.scale, self.shift, self.probability = rotate_deg, scale, shift, probability

    def matrix(self, size: int) -> np.ndarray:
        """A random (2, 3) matrix about the image centre, drawn from torch's generator (seeded runs repeat)."""
        u = (torch.rand(4) * 2 - 1).tolist()  # four draws in [-1, 1]
        angle, zoom = u[0] * self.rotate_deg, 1.0 + u[1] * self.scale

        matrix = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), angle, zoom)
        matrix[:, 2] += np.array(u[2:]) * self.shift * size
        return matrix

    def __call__(self, source: np.ndarray, target: np.ndarray, mask: np.ndarray):
        if not (self.rotate_deg or self.scale or self.shift) or torch.rand(()) >= self.probability:
            return source, target, mask

        size = source.shape[0]
        matrix = self.matrix(size)

        def warp(image, interpolation, border, value=0):
            return cv2.warpAffine(
                np.ascontiguousarray(image),
                matrix,
                (size, size),
                flags=interpolation,
                borderMode=border,
                borderValue=value,
            )

        return (
            warp(source, cv2.INTER_LINEAR, cv2.BORDER_REFLECT_101),
            warp(target, cv2.INTER_LINEAR, cv2.BORDER_REFLECT_101),
            warp(mask, cv2.INTER_NEAREST, cv2.BORDER_CONSTANT, BACKGROUND),
        )


class PairedDataset(Dataset):
    """Pairs at `size` x `size`: source/target (3, H, W) in [-1, 1], mask (H, W) int64, has_mask bool.

    `hflip` flips source, target and mask together with probability 0.5; `affine` (JointAffine's keys)
    moves, turns and scales them together. `cache` keeps the resized
    uint8 arrays in memory after the first read (a few hundred pairs fit easily; thousands at 256
    take about 400 KB a pair).
    """

    def __init__(
        self,
        pairs: list[Pair],
        size: int,
        hflip: bool = False,
        cache: bool = False,
        affine: dict[str, float] | None = None,
    ):
        self.pairs, self.size, self.hflip, self.cache = list(pairs), int(size), hflip, cache
        self.affine = JointAffine(**affine) if affine else None
        self._memory: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if index in self._memory:
            return self._memory[index]
        pair = self.pairs[index]
        source = resize_rgb(read_rgb(pair.source), self.size)
        target = resize_rgb(read_rgb(pair.target), self.size)
        mask = resize_labels(read_labels(pair.mask), self.size) if pair.mask is not None else None
        if self.cache:
            self._memory[index] = (source, target, mask)
        return source, target, mask

    def __getitem__(self, index: int) -> dict:
        source, target, mask = self.load_arrays(index)
        has_mask = mask is not None
        if mask is None:
            mask = np.zeros(source.shape[:2], np.uint8)
        if self.hflip and torch.rand(()) < 0.5:
            source, target, mask = source[:, ::-1], target[:, ::-1], mask[:, ::-1]
        if self.affine is not None:
            source, target, mask = self.affine(source, target, mask)

        def to_tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 127.5 - 1.0

        return {
            "name": self.pairs[index].name,
            "source": to_tensor(source),  # (3, H, W) in [-1, 1]
            "target": to_tensor(target),  # (3, H, W) in [-1, 1]
            "mask": torch.from_numpy(np.array(mask)).long(),  # (H, W) makeup labels
            "has_mask": torch.tensor(has_mask),
        }

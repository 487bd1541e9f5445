"""Face crops as the amplifier and the face prior see them: one photo (`prepare_face`), or a folder, cached.

`prepare_face` is stage 3's view of a photo: the largest face, aligned (eye line levelled, margin 0.4),
parsed into makeup regions at `face.parse_size` and resized to the output resolution; an input that gives
no pair raises `SkipInput` with a short reason code. `build_face_tools` makes the aligner and parser from
stage 3's config (configs/dda_amplify.yaml, `face.*`).


The face prior (`pretrain_prior.py`) must see faces framed exactly as the DDA sees them in stages 2
and 3: `FaceAligner` (eye line levelled, margin 0.4) at `crop_size`, the size `dda_amplify.py`
parses at (`face.parse_size`), resized afterwards to the model's resolution. Aligning 4,500 photos
takes minutes, so the crops are computed once and kept as a `.npy` (uint8, N x S x S x 3) with a
JSON list of names and of the files that were skipped, with the reason.

Unreadable files and photos without a face are skipped and listed by name; the run goes on.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from common import atomic_write, atomic_write_text, log
from data.face_align import FaceAligner
from data.face_parsing import FaceParser
from data.io import ImageReadError, list_images, read_rgb, resize_labels, resize_rgb


@dataclass
class FaceCrops:
    crops: np.ndarray  # (N, S, S, 3) uint8, aligned as stage 3 aligns
    names: list[str]  # "folder/file" for each crop
    skipped: dict[str, str] = field(default_factory=dict)  # "folder/file" -> reason


def _cache_key(folders: list[Path], crop_size: int, margin: float, limit: int | None) -> dict:
    return {
        "folders": [str(f.resolve()) for f in folders],
        "files": [len(list_images(f)) for f in folders],
        "crop_size": int(crop_size),
        "margin": float(margin),
        "limit": limit,
    }


def align_folders(
    folders: list[str | os.PathLike],
    cache_stem: str | os.PathLike,
    crop_size: int = 256,
    margin: float = 0.4,
    limit: int | None = None,
    desc: str = "aligning faces",
) -> FaceCrops:
    """Aligned crops of every face photo in `folders` (largest face each), cached at `cache_stem`.npy/.json.

    The cache is reused when it was made from the same folders (and file counts), size, margin and
    limit; otherwise it is rebuilt. Both files are written through a temporary name, then renamed.
    """
    folders = [Path(f) for f in folders]
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"face folder not found: {folder}")
    stem = Path(cache_stem)
    meta_path, array_path = stem.with_suffix(".json"), stem.with_suffix(".npy")
    key = _cache_key(folders, crop_size, margin, limit)
    if meta_path.is_file() and array_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            crops = np.load(array_path, mmap_mode="r")
            return FaceCrops(crops=crops, names=meta["names"], skipped=meta["skipped"])
    paths = [(folder, path) for folder in folders for path in list_images(folder)]
    if limit is not None:
        paths = paths[: int(limit)]
    crops = np.empty((len(paths), crop_size, crop_size, 3), np.uint8)
    names: list[str] = []
    skipped: dict[str, str] = {}
    with FaceAligner(size=crop_size, margin=margin, max_faces=4) as aligner:
        for folder, path in tqdm(paths, desc=desc, unit="face", dynamic_ncols=True):
            name = f"{folder.name}/{path.name}"
            try:
                faces = aligner.detect(read_rgb(path))
            except ImageReadError as err:
                skipped[name] = f"unreadable: {err}"
                continue
            if not faces:
                skipped[name] = "no face found"
                continue
            crops[len(names)] = faces[0].crop
            names.append(name)
    crops = crops[: len(names)]
    for name, reason in skipped.items():
        log.warning("skipped %s: %s", name, reason)
    atomic_write(array_path, lambda tmp: np.save(tmp, crops))
    atomic_write_text(meta_path, json.dumps({"key": key, "names": names, "skipped": skipped}, indent=0))
    return FaceCrops(crops=crops, names=names, skipped=skipped)


class SkipInput(Exception):
    """An input that gives no pair. `reason` is a short code for the summary, `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class PreparedFace:
    source: np.ndarray  # (R, R, 3) uint8, the aligned crop
    mask: np.ndarray  # (R, R) uint8 makeup labels
    box: list[float]
    matrix: list[list[float]]  # (2, 3) photo -> output crop affine, to paste the makeup back into the photo
    seconds: float
    landmarks: np.ndarray | None = None  # (478, 2) FaceMesh landmarks at the output resolution (the makeup draft's)
    drafts: dict = field(default_factory=dict)  # stage 3: checkpoint -> the drafted face, (R, R, 3) uint8


def read_photo(path: Path) -> np.ndarray:
    try:
        return read_rgb(path)
    except ImageReadError as err:
        try:
            with Image.open(path):  # header only: does it even claim to be an image?
                reason = "corrupt"
        except Exception:
            reason = "not_an_image"
        raise SkipInput(reason, str(err)) from None


def _box_area(box) -> float:
    x0, y0, x1, y1 = (float(v) for v in list(box)[:4])
    return abs(x1 - x0) * abs(y1 - y0)


def prepare_face(path: Path, aligner, parser, resolution: int) -> PreparedFace:
    """The largest face of the photo, aligned at `resolution`, with its makeup-region labels."""
    start = time.perf_counter()
    photo = read_photo(path)
    faces = aligner.detect(photo)
    if not faces:
        raise SkipInput("no_face", f"{path}: no face found")
    face = max(faces, key=lambda f: _box_area(f.box))
    crop = np.ascontiguousarray(face.crop)  # (S, S, 3) at the aligner's size (>= resolution)
    parse = parser.parse(crop)
    if parse is None:
        raise SkipInput("no_face_parse", f"{path}: the face parser found no face in the aligned crop")
    mask = np.array(resize_labels(np.ascontiguousarray(parse.makeup, np.uint8), resolution))
    scale = resolution / crop.shape[0]
    crop = np.array(resize_rgb(crop, resolution))  # writable, own memory
    if not (mask > 0).any():
        raise SkipInput("no_makeup_region", f"{path}: no eye, lip or skin region in the aligned crop")
    return PreparedFace(
        source=crop,
        mask=mask,
        box=[round(float(v), 2) for v in list(face.box)[:4]],
        # photo -> crop at the output resolution (the aligner's crop was `scale` times larger)
        matrix=(np.asarray(face.matrix, np.float64) * scale).round(6).tolist(),
        seconds=time.perf_counter() - start,
        landmarks=None if parse.landmarks is None else np.asarray(parse.landmarks, np.float64) * scale,  # exact scaling
    )


def build_face_tools(cfg: DictConfig, resolution: int, eye_region: str = "lid"):
    """The aligner and parser of stage 3's `face.*` settings; `eye_region`: what the mask's eye label covers
    (data.face_parsing.makeup_regions), the one the DDA was trained with."""
    size = max(resolution, int(cfg.face.parse_size))
    aligner = FaceAligner(size=size, margin=float(cfg.face.margin), max_faces=int(cfg.face.max_faces))
    return aligner, FaceParser(eye_region=eye_region)

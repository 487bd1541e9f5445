"""Image and label-map I/O that copes with what users' folders hold.

Grayscale, palette, RGBA and 16-bit images are converted to 8-bit RGB; an unreadable or corrupt
file raises `ImageReadError` naming the file, so callers can report it and skip it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ImageReadError(InputError):
    """A file that is not a readable image. The message names the file and the reason."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in `folder`, sorted by name (hidden files skipped)."""
    folder = Path(folder)
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # force decoding now: truncated files fail here, not later in a worker
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: not a readable image ({err})") from None
    return image


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any common image file."""
    path = Path(path)
    image = _open(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit int) grayscale: scale to 8 bits by the type's range, not by clipping.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if image.mode == "RGBA" or image.mode == "LA" or (image.mode == "P" and "transparency" in image.info):
        # Composite onto white, as a photo viewer shows it.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    array = np.asarray(image.convert("RGB"))
    if array.dtype != np.uint8:
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8 label map (one class id a pixel). An RGB file takes its first channel."""
    path = Path(path)
    image = _open(path)
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., 0]
    return np.ascontiguousarray(array.astype(np.uint8))


def resize_rgb(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize (H, W, 3) uint8 to `size` (int: square; tuple: (width, height)) with area/cubic filtering."""
    width, height = (size, size) if isinstance(size, int) else size
    if image.shape[1] == width and image.shape[0] == height:
        return image
    pil = Image.fromarray(image)
    shrinking = width < image.shape[1]
    return np.asarray(pil.resize((width, height), Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC))


def resize_labels(labels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a label map with nearest neighbour so no new classes appear."""
    width, height = (size, size) if isinstance(size, int) else size
    if labels.shape[1] == width and labels.shape[0] == height:
        return labels
    return np.asarray(Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST))

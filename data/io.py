"""Image and label-map I/O that copes with what users' folders hold.

Grayscale, palette, RGBA, CMYK and 16-bit images are converted to 8-bit RGB (an animated GIF gives its
first frame); a photo is turned upright by its EXIF orientation tag (phones store the pixels as the
sensor saw them and say in the tag how to turn them), so every stage sees, and writes, what a photo
viewer shows. An unreadable, corrupt or truncated file, or one over `MAX_PIXELS`, raises
`ImageReadError` naming the file, so callers can report it and skip it.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Pillow's own refusal threshold (twice Image.MAX_IMAGE_PIXELS, about 179 million pixels: a 16,000 x
# 11,000 photo): above it a file is refused before decoding. Between the two Pillow only warns; a
# 12,000 x 9,000 photo (108 MP, 324 MB as RGB) is read.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
ORIENTATION = 0x0112  # the EXIF tag: 1 upright, 2-8 mirrored and/or turned by 90, 180 or 270 degrees
log = logging.getLogger("makeup")


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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # up to MAX_PIXELS is read
            image = Image.open(path)
            if image.width * image.height > MAX_PIXELS:
                raise ImageReadError(
                    f"{path}: too large to read ({image.width} x {image.height} = {image.width * image.height:,} "
                    f"pixels; at most {MAX_PIXELS:,})"
                )
            image.load()  # force decoding now: truncated files fail here, not later in a worker
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{path}: too large to read ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as err:
        raise ImageReadError(f"{path}: not a readable image ({err})") from None
    return image


def upright(image: Image.Image, path: str | os.PathLike = "") -> Image.Image:
    """`image` turned as its EXIF orientation tag says (Pillow's exif_transpose), the tag dropped; unchanged
    when there is no tag or it is 1. A broken EXIF block is logged and ignored (the pixels as stored)."""
    try:
        orientation = image.getexif().get(ORIENTATION, 1)
        if orientation in (None, 1):
            return image
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error) as err:
        log.warning("%s: unreadable EXIF orientation, the pixels are used as stored (%s)", path, err)
        return image


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any common image file, upright (EXIF orientation applied)."""
    path = Path(path)
    image = upright(_open(path), path)
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
    return _rgb_array(image if image.mode == "RGB" else image.convert("RGB"))


def _rgb_array(image: Image.Image, strip_bytes: int = 1 << 24) -> np.ndarray:
    """An RGB image as (H, W, 3) uint8, copied in strips of about 16 MB: np.asarray(image) would go through
    image.tobytes(), which holds the pixels twice more while it joins its chunks (a 108 MP photo: 0.6 GB)."""
    width, height = image.size
    array = np.empty((height, width, 3), np.uint8)
    rows = max(1, strip_bytes // max(1, 3 * width))
    for top in range(0, height, rows):
        array[top : top + rows] = np.asarray(image.crop((0, top, width, min(height, top + rows))))
    return array


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8 label map (one class id a pixel), upright as read_rgb. An RGB file takes its first channel."""
    path = Path(path)
    image = upright(_open(path), path)
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

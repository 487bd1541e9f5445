"""A trained TinyBeauty on a face: load the checkpoint, apply the makeup at an adjustable intensity.

The model runs at its training resolution (`data.size` of the checkpoint's config); its makeup residual
there is the clamped output minus the face, `clamp(face + raw residual) - face`, what training compared
with the target. For a face of another size that residual is resized to the face's size before it is
added, so a large face keeps its own detail and only the makeup is upsampled. The intensity (0 to 1.5)
scales it: `clamp(face + X * residual)`; 0 gives the face back exactly, 1 the model's output. An
intensity map (deploy/regions.py: one value per region, lips, eyes, skin) scales it pixel by pixel instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import from_uint8, load_checkpoint, psnr, to_uint8
from data.io import resize_rgb
from models.tinybeauty import load_tinybeauty


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[torch.nn.Module, int]:
    """(model in eval mode, the resolution it was trained at) from a tinybeauty_*.pt file."""
    state = load_checkpoint(checkpoint)
    model = load_tinybeauty(state, device)
    return model, int(state["config"]["data"]["size"])


INTENSITY_RANGE = (0.0, 1.5)  # 0: the face unchanged; 1: the model's makeup; above 1: stronger


def check_intensity(value: float, what: str = "intensity") -> float:
    """`value` if it lies in INTENSITY_RANGE, else a ValueError naming `what` (e.g. "intensity lips")."""
    low, high = INTENSITY_RANGE
    if not low <= value <= high:  # also rejects nan
        raise ValueError(f"{what} must be between {low:g} and {high:g} (1 is the trained makeup), got {value:g}")
    return float(value)


def blend(face: torch.Tensor, makeup: torch.Tensor, intensity: float | torch.Tensor = 1.0) -> torch.Tensor:
    """clamp(face + intensity x (makeup - face), -1, 1), written as makeup x intensity + face x (1 - intensity)
    so that intensity 0 gives `face` and 1 gives `makeup` bit for bit (tinybeauty_export builds the same graph)."""
    return (makeup * intensity + face * (1 - intensity)).clamp(-1.0, 1.0)


def parity(reference: np.ndarray, other: np.ndarray, target: np.ndarray) -> dict:
    """An export's output (`other`) against PyTorch's (`reference`) and the targets, all (N, 3, S, S) in
    [-1, 1]: max abs error, mean PSNR against PyTorch (capped at 100 dB) and against the targets."""
    ref, oth, tgt = (torch.from_numpy(np.asarray(a, np.float32)) for a in (reference, other, target))
    return {
        "max_abs_error": float((ref - oth).abs().max()),
        "psnr_vs_pytorch": float(psnr(oth, ref).clamp_max(100).mean()),
        "psnr_vs_target": float(psnr(oth, tgt).mean()),
    }


@torch.no_grad()
def apply_makeup(
    model: torch.nn.Module,
    image: np.ndarray,
    size: int,
    device: torch.device,
    intensity: float = 1.0,
    intensity_map: np.ndarray | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8 face of any size -> (H, W, 3) uint8 with makeup at `intensity` (0 to 1.5), or at a
    per-pixel `intensity_map` ((size, size) float32, deploy.regions) when one is given."""
    return makeup_image(lambda small: model(small.to(device)).float().cpu(), image, size, intensity, intensity_map)


@torch.no_grad()
def makeup_image(
    run: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    size: int,
    intensity: float = 1.0,
    intensity_map: np.ndarray | None = None,
) -> np.ndarray:
    """`apply_makeup` for any engine: `run` maps (1, 3, size, size) float32 in [-1, 1] to the model's output,
    clamp(face + residual), the same shape (PyTorch, or an ONNX Runtime session: deploy.crop_model).

    `intensity_map` ((size, size) float32, the face's regions: deploy.regions) replaces `intensity`: the change
    at the model's size is scaled pixel by pixel, clamp(face + I(x) x change), before it is resized."""
    intensity = check_intensity(intensity)
    height, width = image.shape[:2]
    small = from_uint8(np.array(resize_rgb(image, size)))[None]  # (1, 3, size, size) in [-1, 1]
    makeup = run(small).float()  # clamp(small + residual): what training compared with the target
    if intensity_map is not None:
        intensity = torch.from_numpy(np.ascontiguousarray(intensity_map, np.float32))[None, None]  # (1, 1, S, S)
    if (height, width) == (size, size):
        return to_uint8(blend(small, makeup, intensity)[0])
    # The change the model made at its resolution, not its raw residual: near saturated pixels the raw
    # residual is unconstrained (training only saw it through the clamp) and would bleed when upsampled.
    change = (makeup - small)[0]
    if intensity_map is not None:  # scaled here, at the model's size: the map is smooth, the resize linear
        return add_change(image, change * intensity[0], 1.0)
    return add_change(image, change, intensity)


def add_change(
    image: np.ndarray, change: torch.Tensor, intensity: float = 1.0, band_pixels: int = 1 << 22
) -> np.ndarray:
    """clamp(image + intensity x change resized to the image), rounded as common.to_uint8; (H, W, 3) uint8.

    `change` is (3, S, S) in [-1, 1] units. The resize is F.interpolate's bilinear (align_corners=False, the
    same numbers), done as its two separable passes: across once, to (S, W, 3), then down band by band in
    numpy, so a 12,000-pixel photo needs a few bands of floats at a time instead of several full-size float
    copies (5 GB for 108 MP), in a fifth of the time of doing the bands in torch (6 s against 28 s, loaded).
    """
    height, width = image.shape[:2]
    size_y = change.shape[1]
    across = F.interpolate(change[None].float(), size=(size_y, width), mode="bilinear", align_corners=False)[0]
    across = across.permute(1, 2, 0).contiguous().numpy()  # (S, W, 3)
    # The rows' source positions and weights, as ATen's upsample_bilinear2d computes them (float32).
    half, scale = np.float32(0.5), np.float32(size_y / height)
    source_y = np.maximum((np.arange(height, dtype=np.float32) + half) * scale - half, 0)
    upper = np.minimum(source_y.astype(np.int64), size_y - 1)
    lower = np.minimum(upper + 1, size_y - 1)
    weight = np.clip(source_y - upper, 0, 1).astype(np.float32)[:, None, None]  # (H, 1, 1)
    out = np.empty_like(image)
    rows = max(1, band_pixels // max(1, width))
    for top in range(0, height, rows):
        band = slice(top, min(height, top + rows))
        resized = across[upper[band]] * (1 - weight[band]) + across[lower[band]] * weight[band]  # (b, W, 3)
        value = image[band].astype(np.float32) / np.float32(127.5) - np.float32(1)  # common.from_uint8
        value += np.float32(intensity) * resized
        np.clip(value, -1, 1, out=value)
        value += 1
        value *= np.float32(127.5)
        out[band] = np.rint(value, out=value)  # common.to_uint8 (round half to even, as torch.round)
    return out

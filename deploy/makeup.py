"""A trained TinyBeauty on a face: load the checkpoint, apply the makeup at an adjustable intensity.

The model runs at its training resolution (`data.size` of the checkpoint's config); its makeup residual
there is the clamped output minus the face, `clamp(face + raw residual) - face`, what training compared
with the target. For a face of another size that residual is resized to the face's size before it is
added, so a large face keeps its own detail and only the makeup is upsampled. The intensity (0 to 1.5)
scales it: `clamp(face + X * residual)`; 0 gives the face back exactly, 1 the model's output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import from_uint8, load_checkpoint, to_uint8
from data.io import resize_rgb
from models.tinybeauty import load_tinybeauty


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[torch.nn.Module, int]:
    """(model in eval mode, the resolution it was trained at) from a tinybeauty_*.pt file."""
    state = load_checkpoint(checkpoint)
    model = load_tinybeauty(state, device)
    return model, int(state["config"]["data"]["size"])


INTENSITY_RANGE = (0.0, 1.5)  # 0: the face unchanged; 1: the model's makeup; above 1: stronger


def check_intensity(value: float) -> float:
    low, high = INTENSITY_RANGE
    if not low <= value <= high:  # also rejects nan
        raise ValueError(f"intensity must be between {low:g} and {high:g} (1 is the trained makeup), got {value:g}")
    return float(value)


def blend(face: torch.Tensor, makeup: torch.Tensor, intensity: float | torch.Tensor = 1.0) -> torch.Tensor:
    """clamp(face + intensity x (makeup - face), -1, 1), written as makeup x intensity + face x (1 - intensity)
    so that intensity 0 gives `face` and 1 gives `makeup` bit for bit (tinybeauty_export builds the same graph)."""
    return (makeup * intensity + face * (1 - intensity)).clamp(-1.0, 1.0)


@torch.no_grad()
def apply_makeup(
    model: torch.nn.Module, image: np.ndarray, size: int, device: torch.device, intensity: float = 1.0
) -> np.ndarray:
    """(H, W, 3) uint8 face of any size -> (H, W, 3) uint8 with makeup at `intensity` (0 to 1.5)."""
    intensity = check_intensity(intensity)
    height, width = image.shape[:2]
    small = from_uint8(np.array(resize_rgb(image, size)))[None].to(device)  # (1, 3, size, size) in [-1, 1]
    makeup = model(small).float()  # clamp(small + residual): what training compared with the target
    if (height, width) == (size, size):
        return to_uint8(blend(small, makeup, intensity)[0])
    # The change the model made at its resolution, not its raw residual: near saturated pixels the raw
    # residual is unconstrained (training only saw it through the clamp) and would bleed when upsampled.
    makeup_residual = F.interpolate(makeup - small, size=(height, width), mode="bilinear", align_corners=False)
    full = from_uint8(np.array(image))[None].to(device)  # (1, 3, H, W)
    return to_uint8((full + intensity * makeup_residual).clamp(-1, 1)[0])

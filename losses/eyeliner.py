"""The Sobel "eyeliner" loss (TinyBeauty, ECCV 2024, Sec. 3.3).

Eyeliner is a thin, high-contrast line: an L1 or L2 loss on pixels barely notices it being blurred
or shifted by a pixel, but its edges change a lot. The loss compares Sobel gradient magnitudes of
the grayscale prediction and target, within the eye-makeup region (mask label 1) when a mask is
given and over the whole image otherwise, as a mean per sample (see `EyelinerLoss.forward`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
# ITU-R BT.601 luma, as OpenCV's RGB2GRAY.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def sobel_gradients(image: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2C, H, W): the horizontal and vertical Sobel responses of each channel (x, y per channel)."""
    channels = image.shape[1]
    kernels = torch.stack([_SOBEL_X, _SOBEL_X.t()])[:, None].repeat(channels, 1, 1, 1).to(image)  # (2C, 1, 3, 3)
    return F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), kernels, groups=channels)


def sobel_magnitude(image: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, 3, H, W) or (B, 1, H, W) -> (B, 1, H, W) gradient magnitude of the grayscale image."""
    if image.shape[1] == 3:
        image = (image * _LUMA.to(image)[None, :, None, None]).sum(1, keepdim=True)
    grad = sobel_gradients(image)
    return torch.sqrt(grad.pow(2).sum(1, keepdim=True) + eps)


class EyelinerLoss(nn.Module):
    name = "eyeliner"

    def __init__(self, weight: float = 0.5, eye_label: int = 1):
        super().__init__()
        self.weight = float(weight)
        self.eye_label = int(eye_label)

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        has_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """pred, target: (B, 3, H, W); mask: optional (B, H, W) makeup labels; has_mask: optional (B,) bool.

        A per-sample mean: each sample's edge difference is averaged over its own region's pixels (so the
        term does not shrink with a small eye region), then the samples are averaged, each counting once
        whatever its region's size. The region is the eye label of the mask; the whole image without a
        mask, and for samples whose has_mask is False. A sample with a mask but no eye pixels (eyes
        cropped out, closed, or not found by the parser) has nothing to supervise and is left out of the
        average; when no sample has a region the loss is 0 (still part of the graph).
        """
        edge_error = (sobel_magnitude(pred.float()) - sobel_magnitude(target.float())).abs()  # (B, 1, H, W)
        if mask is None:
            return self.weight * edge_error.mean()  # every sample's region is its whole image: the same size
        region = (mask == self.eye_label).unsqueeze(1).to(edge_error.dtype)  # (B, 1, H, W)
        if has_mask is not None:
            whole = (~has_mask.bool()).view(-1, 1, 1, 1).to(edge_error.dtype)
            region = region * (1 - whole) + whole
        pixels = region.sum((1, 2, 3))  # (B,)
        per_sample = (edge_error * region).sum((1, 2, 3)) / pixels.clamp_min(1.0)  # (B,)
        counted = (pixels > 0).to(per_sample.dtype)
        return self.weight * (per_sample * counted).sum() / counted.sum().clamp_min(1.0)

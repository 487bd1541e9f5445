"""L1 reconstruction loss, optionally weighted per pixel (FGMM's region weights use that)."""

from __future__ import annotations

import torch
from torch import nn


class L1Loss(nn.Module):
    name = "l1"

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """pred, target: (B, C, H, W); pixel_weight: optional (B, 1, H, W), normalised by its sum."""
        error = (pred - target).abs()
        if pixel_weight is None:
            return self.weight * error.mean()
        pixel_weight = pixel_weight.to(error.dtype).expand_as(error)
        return self.weight * (error * pixel_weight).sum() / pixel_weight.sum().clamp_min(1e-8)

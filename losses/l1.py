"""L1 reconstruction loss, optionally weighted per pixel (FGMM's region weights use that).

`eps` > 0 makes it Charbonnier, sqrt(error^2 + eps^2) - eps: quadratic for errors well below eps, L1-like
above. Plain L1 pulls every pixel the target leaves unchanged back with a full unit gradient on any tiny
residual, which holds a residual model at the identity on sparse makeup (see configs/tinybeauty.yaml)."""

from __future__ import annotations

import torch
from torch import nn

from data.paired import MAKEUP_LABELS
from errors import ConfigError


def region_weight_table(region_weights: dict | None, key: str = "loss.region_weights") -> torch.Tensor:
    """(len(MAKEUP_LABELS),) per-label weights from a mapping of eyes, lips and skin under config key `key`
    (background and unlisted regions 1); an unknown region or a negative weight is a ConfigError naming the key."""
    table = torch.ones(len(MAKEUP_LABELS))
    for region, weight in (region_weights or {}).items():
        if region not in MAKEUP_LABELS or region == "background":
            raise ConfigError(f"config key '{key}.{region}': unknown region (expected eyes, lips or skin)")
        if float(weight) < 0:
            raise ConfigError(f"config key '{key}.{region}' must be 0 or more, got {weight!r}")
        table[MAKEUP_LABELS[region]] = float(weight)
    return table


def weighted_mean(error: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of `error` weighted by `weight` (broadcast to its shape), normalised by the weights' sum."""
    weight = weight.to(error.dtype).expand_as(error)
    return (error * weight).sum() / weight.sum().clamp_min(1e-8)


class L1Loss(nn.Module):
    name = "l1"

    def __init__(self, weight: float = 1.0, eps: float = 0.0):
        super().__init__()
        self.weight, self.eps = float(weight), float(eps)

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """pred, target: (B, C, H, W); pixel_weight: optional (B, 1, H, W), normalised by its sum."""
        diff = pred - target
        error = diff.abs() if self.eps <= 0 else (diff.square() + self.eps**2).sqrt() - self.eps
        if pixel_weight is None:
            return self.weight * error.mean()
        return self.weight * weighted_mean(error, pixel_weight)

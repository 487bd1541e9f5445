"""Fine-Grained Makeup Module (FGMM): makeup only where it belongs, controllable per region.

TinyBeauty (ECCV 2024, Sec. 3.2) conditions the amplifier on face-region masks so that makeup lands
on the eyes, lips and skin and nowhere else, and so that each region's strength can be set at
amplification time (lips 1.0, eyes 0.5, skin 0.0, ...) or taken from a different trained style.

Here that is a learnable gain per region (initial 1.0, as in the seed), applied to a makeup signal
(the styled image minus the source) through the makeup-region labels of `data.paired`:
0 background, 1 eyes, 2 lips, 3 skin. Background always gets 0, and so does a region whose weight
is 0, exactly: `source + FGMM(styled - source)` is then bit-for-bit the source there. In training the
gains are learned through the reconstruction loss (a region whose makeup the diffusion model under-
or over-shoots gets a gain above or below 1); at amplification `overrides` replaces them.
"""

from __future__ import annotations

import torch
from torch import nn

REGIONS = ("eyes", "lips", "skin")  # labels 1, 2, 3 of the makeup mask


class FGMM(nn.Module):
    def __init__(self, eyes: float = 1.0, lips: float = 1.0, skin: float = 1.0):
        super().__init__()
        self.region_weights = nn.Parameter(torch.tensor([eyes, lips, skin], dtype=torch.float32))

    def weights(self, overrides: dict[str, float] | None = None) -> dict[str, float]:
        """The effective per-region weights as plain floats (learned, with `overrides` on top)."""
        current = {name: float(w) for name, w in zip(REGIONS, self.region_weights.detach().cpu())}
        for name, value in (overrides or {}).items():
            if name not in REGIONS:
                raise ValueError(f"unknown FGMM region '{name}' (expected one of {', '.join(REGIONS)})")
            current[name] = float(value)
        return current

    def weight_map(self, makeup_mask: torch.Tensor, overrides: dict[str, float] | None = None) -> torch.Tensor:
        """(B, H, W) labels 0-3 -> (B, 1, H, W) per-pixel weight: 0 on background, the region's weight elsewhere.

        Without overrides the map is differentiable in the learned weights.
        """
        table = self.region_weights
        if overrides:
            table = table.clone()
            for name, value in overrides.items():
                if name not in REGIONS:
                    raise ValueError(f"unknown FGMM region '{name}' (expected one of {', '.join(REGIONS)})")
                table = table.index_fill(0, torch.tensor(REGIONS.index(name), device=table.device), float(value))
        lookup = torch.cat([table.new_zeros(1), table])  # index 0 = background
        labels = makeup_mask.long().clamp(0, len(REGIONS))
        return lookup[labels].unsqueeze(1)

    def forward(
        self,
        makeup_signal: torch.Tensor,
        makeup_mask: torch.Tensor,
        overrides: dict[str, float] | None = None,
    ) -> torch.Tensor:
        """makeup_signal (B, C, H, W) weighted by region; exactly 0 on background and weight-0 regions."""
        weight = self.weight_map(makeup_mask, overrides).to(makeup_signal.dtype)
        weighted = makeup_signal * weight
        # 0 * signal is -0.0 or NaN for non-finite signals: make "no makeup here" an exact zero.
        return torch.where(weight == 0, torch.zeros_like(weighted), weighted)


def fit_region_gains(
    change: torch.Tensor, target_change: torch.Tensor, makeup_mask: torch.Tensor
) -> dict[str, float | None]:
    """Per region, the gain g that brings `change` closest to `target_change` (least squares inside the region).

    change, target_change: (B, 3, H, W) (output - source, target - source); makeup_mask (B, H, W) labels.
    g = <change, target> / <change, change> over the region's pixels and channels; None where the region is
    empty or the change there is zero (nothing to scale). The calibration of `dda_training.py calibrate=K`.
    """
    gains: dict[str, float | None] = {}
    for index, region in enumerate(REGIONS, start=1):
        inside = (makeup_mask == index).unsqueeze(1).expand_as(change)
        made, wanted = change[inside].double(), target_change[inside].double()
        energy = float((made * made).sum())
        gains[region] = float((made * wanted).sum()) / energy if made.numel() and energy > 1e-12 else None
    return gains

"""TinyBeauty's training loss (stage 4): L1 (optionally region-weighted) + Sobel eyeliner in the eye region."""

from __future__ import annotations

import torch
from torch import nn

from data.paired import MAKEUP_LABELS
from losses.eyeliner import EyelinerLoss
from losses.l1 import L1Loss, region_weight_table


class TinyBeautyLoss(nn.Module):
    """L1 x `l1` (Charbonnier when `charbonnier_eps` > 0) + eyeliner x `eyeliner`; returns the total and
    each named term as floats.

    `region_weights` maps eyes, lips and skin to a per-pixel weight of the L1 term (background and any
    region left out: 1), applied to samples that have a mask; the weighted mean is normalised by the
    weights' sum, so the term's scale stays that of a plain L1. Makeup sits on a few percent of the
    pixels (lips ~1-3%), so an unweighted L1 gives the lips a matching few percent of the gradient.
    """

    def __init__(self, l1: float = 1.0, eyeliner: float = 0.5, charbonnier_eps: float = 0.0, region_weights=None):
        super().__init__()
        self.l1 = L1Loss(l1, charbonnier_eps)
        self.eyeliner = EyelinerLoss(eyeliner, eye_label=MAKEUP_LABELS["eyes"])
        table = region_weight_table(region_weights)
        self.register_buffer("region_table", table)
        self.weighted = bool((table != 1).any())

    @classmethod
    def from_config(cls, cfg) -> TinyBeautyLoss:
        """From stage 4's config (`configs/tinybeauty.yaml`: loss.l1, loss.eyeliner, loss.charbonnier_eps,
        loss.region_weights)."""
        loss = cfg.loss
        region_weights = loss.get("region_weights") or {}
        return cls(loss.l1, loss.eyeliner, loss.charbonnier_eps, dict(region_weights))

    def pixel_weight(self, batch: dict) -> torch.Tensor | None:
        """(B, 1, H, W) L1 weights from the mask labels; 1 everywhere for samples without a mask."""
        if not self.weighted:
            return None
        weight = self.region_table.to(batch["mask"].device)[batch["mask"].long()]  # (B, H, W)
        has_mask = batch["has_mask"].to(weight.device).bool().view(-1, 1, 1)
        return torch.where(has_mask, weight, torch.ones_like(weight)).unsqueeze(1)

    def forward(self, pred: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        l1 = self.l1(pred.float(), batch["target"], pixel_weight=self.pixel_weight(batch))
        eyeliner = self.eyeliner(pred.float(), batch["target"], batch["mask"], batch["has_mask"])
        total = l1 + eyeliner
        return total, {"loss": total.item(), "l1": l1.item(), "eyeliner": eyeliner.item()}

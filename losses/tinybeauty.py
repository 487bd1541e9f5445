"""TinyBeauty's training loss (stage 4): L1 + Sobel eyeliner in the eye region."""

from __future__ import annotations

import torch
from torch import nn

from losses.eyeliner import EyelinerLoss
from losses.l1 import L1Loss


class TinyBeautyLoss(nn.Module):
    """L1 x `l1` (Charbonnier when `charbonnier_eps` > 0) + eyeliner x `eyeliner`; returns the total and
    each named term as floats."""

    def __init__(self, l1: float = 1.0, eyeliner: float = 0.5, charbonnier_eps: float = 0.0):
        super().__init__()
        self.l1 = L1Loss(l1, charbonnier_eps)
        self.eyeliner = EyelinerLoss(eyeliner)

    @classmethod
    def from_config(cls, cfg) -> TinyBeautyLoss:
        """From stage 4's config (`configs/tinybeauty.yaml`: loss.l1, loss.eyeliner, loss.charbonnier_eps)."""
        return cls(cfg.loss.l1, cfg.loss.eyeliner, cfg.loss.charbonnier_eps)

    def forward(self, pred: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        l1 = self.l1(pred.float(), batch["target"])
        eyeliner = self.eyeliner(pred.float(), batch["target"], batch["mask"], batch["has_mask"])
        total = l1 + eyeliner
        return total, {"loss": total.item(), "l1": l1.item(), "eyeliner": eyeliner.item()}

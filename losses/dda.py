"""The DDA's training loss (stage 2): diffusion MSE + region-weighted L1 + Sobel eyeliner."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data.paired import MAKEUP_LABELS
from losses.eyeliner import EyelinerLoss
from losses.l1 import L1Loss, region_weight_table


class DDALoss(torch.nn.Module):
    """Diffusion MSE on the predicted noise + L1 of the composite weighted per makeup region + eyeliner.

    `region_weights` maps eyes, lips and skin to their L1 weight. Background pixels count with weight 1
    in the L1's mean but carry no gradient: FGMM keeps the background equal to the source, so no
    weight can mean anything there. Returns the total and each weighted term.
    """

    def __init__(self, diffusion: float = 1.0, l1: float = 1.0, eyeliner: float = 0.5, region_weights=None):
        super().__init__()
        self.diffusion_weight = float(diffusion)
        self.l1 = L1Loss(l1)
        self.eyeliner = EyelinerLoss(eyeliner, eye_label=MAKEUP_LABELS["eyes"])
        self.register_buffer("region_table", region_weight_table(region_weights))

    @classmethod
    def from_config(cls, cfg) -> DDALoss:
        """From stage 2's config (`configs/dda.yaml`: loss.diffusion, loss.l1, loss.eyeliner, loss.region_weights)."""
        loss = cfg.loss
        return cls(loss.diffusion, loss.l1, loss.eyeliner, dict(loss.region_weights))

    def forward(self, out: dict, target: torch.Tensor, mask: torch.Tensor, has_mask: torch.Tensor) -> dict:
        terms = {"diffusion": self.diffusion_weight * F.mse_loss(out["noise_pred"], out["noise_target"])}
        pixel_weight = self.region_table.to(mask.device)[mask].unsqueeze(1)  # (B, 1, H, W)
        terms["l1"] = self.l1(out["composite"], target, pixel_weight=pixel_weight)
        terms["eyeliner"] = self.eyeliner(out["composite"], target, mask, has_mask)
        terms["total"] = sum(terms.values())
        return terms

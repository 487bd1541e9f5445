"""The DDA's training loss (stage 2): diffusion MSE + region-weighted L1 + Sobel eyeliner."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data.paired import MAKEUP_LABELS
from losses.eyeliner import EyelinerLoss
from losses.l1 import L1Loss, region_weight_table, weighted_mean


class DDALoss(torch.nn.Module):
    """Diffusion MSE on the predicted noise + L1 of the composite weighted per makeup region + eyeliner.

    `region_weights` maps eyes, lips and skin to their L1 weight. Background pixels count with weight 1
    in the L1's mean but carry no gradient: FGMM keeps the background equal to the source, so no
    weight can mean anything there. `diffusion_region_weights` does the same for the noise MSE, per
    latent cell: a cell takes the largest weight of the pixels it covers (background 1), and the mean is
    normalised by the weights, so all-1 weights are the plain MSE. Returns the total and each weighted term.
    """

    def __init__(
        self,
        diffusion: float = 1.0,
        l1: float = 1.0,
        eyeliner: float = 0.5,
        region_weights=None,
        diffusion_region_weights=None,
    ):
        super().__init__()
        self.diffusion_weight = float(diffusion)
        self.l1 = L1Loss(l1)
        self.eyeliner = EyelinerLoss(eyeliner, eye_label=MAKEUP_LABELS["eyes"])
        self.register_buffer("region_table", region_weight_table(region_weights))
        table = region_weight_table(diffusion_region_weights, key="loss.diffusion_region_weights")
        self.register_buffer("diffusion_table", table)
        self.diffusion_weighted = bool((table != 1).any())

    @classmethod
    def from_config(cls, cfg) -> DDALoss:
        """From stage 2's config (`configs/dda.yaml`: loss.diffusion, loss.l1, loss.eyeliner, loss.region_weights,
        loss.diffusion_region_weights)."""
        loss = cfg.loss
        weights, cell_weights = dict(loss.region_weights), dict(loss.diffusion_region_weights)
        return cls(loss.diffusion, loss.l1, loss.eyeliner, weights, cell_weights)

    def diffusion_mse(self, noise_pred: torch.Tensor, noise_target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The noise MSE, weighted per latent cell by `diffusion_region_weights` (plain MSE when all are 1)."""
        if not self.diffusion_weighted:
            return F.mse_loss(noise_pred, noise_target)
        pixel = self.diffusion_table.to(mask.device)[mask].unsqueeze(1)  # (B, 1, H, W)
        cell = F.adaptive_max_pool2d(pixel, tuple(noise_pred.shape[-2:]))
        return weighted_mean((noise_pred - noise_target).square(), cell)

    def forward(self, out: dict, target: torch.Tensor, mask: torch.Tensor, has_mask: torch.Tensor) -> dict:
        diffusion = self.diffusion_mse(out["noise_pred"], out["noise_target"], mask)
        terms = {"diffusion": self.diffusion_weight * diffusion}
        pixel_weight = self.region_table.to(mask.device)[mask].unsqueeze(1)  # (B, 1, H, W)
        terms["l1"] = self.l1(out["composite"], target, pixel_weight=pixel_weight)
        terms["eyeliner"] = self.eyeliner(out["composite"], target, mask, has_mask)
        terms["total"] = sum(terms.values())
        return terms

"""Loss modules: each has a `weight` and a `name`, and returns its weighted term. Nothing runs on import."""

from losses.eyeliner import EyelinerLoss, sobel_magnitude
from losses.l1 import L1Loss

LOSSES = {"l1": L1Loss, "eyeliner": EyelinerLoss}

__all__ = ["LOSSES", "EyelinerLoss", "L1Loss", "sobel_magnitude"]

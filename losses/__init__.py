"""Loss modules: each has a `weight` and a `name`, and returns its weighted term. Nothing runs on import.

`losses.tinybeauty.TinyBeautyLoss` (stage 4) and `losses.dda.DDALoss` (stage 2) combine them, each
built from its stage's `loss:` config section with `from_config`.
"""

from losses.eyeliner import EyelinerLoss, sobel_magnitude
from losses.l1 import L1Loss

__all__ = ["EyelinerLoss", "L1Loss", "sobel_magnitude"]

"""Region conditioning: the UNet also sees where the eyes, lips and skin of this face are.

Without it the DDA has to find a new face's lips and eyes from the base model's features alone, and
on the 10M face prior it passes about half of the makeup to faces it has not seen. With it, the face's
makeup-region map (the `mask/` labels: 1 eyes, 2 lips, 3 skin) enters the UNet at latent resolution as
soft one-hot channels (each channel the share of a latent cell's pixels in that region).

It is extra input channels of `conv_in`, initialised to zero: conv_in is linear in its input channels,
so conv_in([x; r]) = conv_in(x) + conv_r(r), and the extra weights are kept as their own 3x3 conv
`conv_r` whose output is added to conv_in's (a forward hook; the UNet and its LoRA keys are untouched).
At step 0 conv_r is exactly zero, so the DDA is the base model bit for bit; it trains with the LoRA.
The base run S' of RDM gets no region map (zeros), so it stays the base model's own run.

To use the trained weights in a plain SD 1.5 pipeline, widen conv_in to 4 + C input channels with
`widened_conv_in` and feed `torch.cat([latents, region_maps(mask, latents.shape[-2:])], 1)`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from models.fgmm import REGIONS

CHANNELS = REGIONS  # one soft one-hot channel per makeup region: eyes, lips, skin (labels 1, 2, 3)


def region_maps(makeup_mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) labels 0-3 -> (B, 3, h, w) in [0, 1]: the share of each latent cell in eyes, lips, skin."""
    labels = makeup_mask.long()
    one_hot = torch.stack([(labels == index + 1) for index in range(len(CHANNELS))], 1).float()
    return F.adaptive_avg_pool2d(one_hot, tuple(int(v) for v in latent_hw))


class RegionConditioning(nn.Module):
    """A zero-initialised 3x3 conv (no bias) from the region maps to conv_in's output channels, added to its output.

    `attach(unet)` hooks it onto the UNet's conv_in; inside `with conditioning.given(maps):` every UNet
    call adds `conv_r(maps)`; outside it (or with maps None) the UNet is the one it wraps, bit for bit.
    """

    def __init__(self, out_channels: int, channels: int = len(CHANNELS)):
        super().__init__()
        # No bias: extra input channels of conv_in have none, and zero maps must give the base model exactly.
        self.conv = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1, bias=False)
        nn.init.zeros_(self.conv.weight)
        self._maps: torch.Tensor | None = None
        self._handle = None

    @property
    def channels(self) -> int:
        return self.conv.in_channels

    def attach(self, unet: nn.Module) -> None:
        conv_in = unet.conv_in
        if conv_in.out_channels != self.conv.out_channels:
            raise ValueError(
                f"region conditioning has {self.conv.out_channels} output channels, but this UNet's conv_in has "
                f"{conv_in.out_channels}"
            )
        self._handle = conv_in.register_forward_hook(self._add)

    def _add(self, module, inputs, output):
        if self._maps is None:
            return output
        maps = self._maps
        if maps.shape[0] != output.shape[0]:  # classifier-free guidance doubles the batch
            maps = maps.repeat(output.shape[0] // maps.shape[0], 1, 1, 1)
        return output + self.conv(maps.to(self.conv.weight.dtype)).to(output.dtype)

    @contextlib.contextmanager
    def given(self, maps: torch.Tensor | None):
        """UNet calls inside see `maps` ((B, C, h, w) at the latent size); None: no conditioning."""
        previous, self._maps = self._maps, maps
        try:
            yield
        finally:
            self._maps = previous


def widened_conv_in(conv_in: nn.Conv2d, conditioning: RegionConditioning) -> nn.Conv2d:
    """conv_in with the region channels appended to its input (4 + C), for a plain pipeline: same output."""
    wide = nn.Conv2d(
        conv_in.in_channels + conditioning.channels,
        conv_in.out_channels,
        kernel_size=conv_in.kernel_size,
        padding=conv_in.padding,
    ).to(conv_in.weight)
    with torch.no_grad():
        wide.weight.copy_(torch.cat([conv_in.weight, conditioning.conv.weight.to(conv_in.weight)], 1))
        wide.bias.copy_(conv_in.bias)
    return wide

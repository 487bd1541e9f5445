"""TinyBeauty rebuilt for phone converters: the same function, in layers every phone runtime runs natively.

`phone_model(model)` returns a module that takes `source` (N, S, S, 3) float32 RGB in [0, 1] (pixel / 255),
channels last as a phone's camera frame is, and a float32 `intensity` of shape [1], and returns `makeup`
(N, S, S, 3) in [0, 1]: the face plus intensity x the model's change, the value of deploy.makeup.blend (the ONNX
export's graph) mapped to [0, 1]. `UnitMakeup` is the same with channels first (Core ML's image input).

Two rewrites, both exact (tests/test_phone_export.py compares them with the model):
- The separable upsampling's depthwise 2x2 stride-2 transposed conv becomes a grouped 1x1 conv to 4x the
  channels (a depthwise conv with multiplier 4) followed by a pixel shuffle. A transposed conv with groups has no TFLite kernel: the
  LiteRT converter splits it into one slice and one transposed conv per channel (112 slices and 113
  transposed convs for the default model, 416 KB fp32), and the Core ML Neural Engine runs plain convs and
  depth_to_space but not every grouped deconvolution.
- The space-to-depth head (a 2x2 stride-2 transposed conv) becomes the 1x1 conv to 12 channels plus pixel
  shuffle it stands for (models/tinybeauty.py builds it the other way round because ONNX Runtime is faster so).
BatchNorm in eval mode is left to the converters, which fold it into the preceding conv.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from models.tinybeauty import TinyBeauty, Upsample


@torch.no_grad()
def shuffled_spread(spread: nn.ConvTranspose2d) -> nn.Sequential:
    """ConvTranspose2d(C, C, 2, stride=2, groups=C) as Conv2d(C, 4C, 1, groups=C) + PixelShuffle(2).

    out[c, 2i+a, 2j+b] = w[c, a, b] * x[c, i, j] + bias[c]; the grouped 1x1 conv writes that to channel
    4c + 2a + b, which PixelShuffle(2) moves to (c, 2i+a, 2j+b). The same 4C weights and C biases (each
    repeated 4 times); merging the 1x1 reduction before it into one conv would be fewer ops but 46% more
    weights (101,628 against 69,587 for the default model), over the int8 file's 100 KB."""
    channels = spread.out_channels
    conv = nn.Conv2d(channels, 4 * channels, 1, groups=channels)
    conv.weight.copy_(spread.weight.reshape(4 * channels, 1, 1, 1))
    bias = spread.bias if spread.bias is not None else torch.zeros(channels)
    conv.bias.copy_(bias.repeat_interleave(4))
    return nn.Sequential(conv, nn.PixelShuffle(2))


@torch.no_grad()
def fused_head(head: nn.ConvTranspose2d) -> nn.Sequential:
    """ConvTranspose2d(C, K, 2, stride=2) as Conv2d(C, 4K, 1) + PixelShuffle(2) (channel 4k + 2a + b)."""
    in_ch, out_ch = head.in_channels, head.out_channels
    conv = nn.Conv2d(in_ch, 4 * out_ch, 1)
    conv.weight.copy_(head.weight.permute(1, 2, 3, 0).reshape(4 * out_ch, in_ch, 1, 1))
    bias = head.bias if head.bias is not None else torch.zeros(out_ch)
    conv.bias.copy_(bias.repeat_interleave(4))
    return nn.Sequential(conv, nn.PixelShuffle(2))


def phone_layers(model: TinyBeauty) -> TinyBeauty:
    """A copy of `model` (eval mode) with the rewrites above; the original is left as it is."""
    model = copy.deepcopy(model).cpu().float().eval()
    for up in model.upsamples:
        if isinstance(up, Upsample) and up.kind == "separable":  # `transposed` (groups 1) every converter has
            up.layers = nn.Sequential(up.layers[0], shuffled_spread(up.layers[1]))
    if isinstance(model.head, nn.ConvTranspose2d):
        model.head = fused_head(model.head)
    return model


class UnitMakeup(nn.Module):
    """(N, 3, S, S) RGB in [0, 1] (pixel / 255) and (1,) intensity -> (N, 3, S, S) RGB in [0, 1].

    Pixels / 255, not the [-1, 1] of training: a full-integer model's int8 input with scale 1/255 and zero point
    -128 is then exactly `pixel - 128`, so quantising the camera frame loses nothing (no int8 zero point hits
    the pixel levels of [-1, 1]), and the output's int8 step is one pixel level, the rounding an app makes anyway.
    """

    def __init__(self, model: TinyBeauty, clamp: bool = True):
        super().__init__()
        self.model, self.clamp = phone_layers(model), clamp

    def forward(self, face: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        residual = self.model.residual(face * 2.0 - 1.0) * 0.5  # (N, 3, S, S), the raw residual in [0, 1] units
        makeup = face + intensity * residual
        # Without the clamp for the int8 model: its output's int8 range, set to [0, 1], saturates there instead
        # (LiteRT's quantizer has no int8 RELU_0_TO_1, and would run the clamp in float between two requantisations).
        return makeup.clamp(0.0, 1.0) if self.clamp else makeup


class PhoneMakeup(UnitMakeup):
    """UnitMakeup with channels last at both ends, (N, S, S, 3), as a phone's camera frame is (LiteRT)."""

    def forward(self, source: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        return super().forward(source.permute(0, 3, 1, 2), intensity).permute(0, 2, 3, 1)


def phone_model(model: TinyBeauty, clamp: bool = True) -> PhoneMakeup:
    return PhoneMakeup(model, clamp).eval()

"""TinyBeauty: a tiny U-Net that predicts a makeup residual (TinyBeauty, ECCV 2024, Sec. 3.3).

The seed's layout: a 3-level encoder (3 -> 16 -> 32 -> 64 channels, max-pool downsampling), a
bottleneck (64 -> 128 -> 128), a decoder with transposed-conv upsampling and a skip connection at
each level, and a 1x1 conv to a 3-channel residual. The output is `clamp(input + residual, -1, 1)`.

Plain 3x3 convs at these widths are about 0.5M parameters; the paper's model is 0.08M. The budget
is met by design: `block: separable` uses depthwise 3x3 + pointwise 1x1 convs (MobileNet), and
`upsample: separable` factors the 2x2 transposed conv into a 1x1 channel reduction followed by a
depthwise 2x2 transposed conv. `block: plain` / `upsample: transposed` give the seed's layers back
(over budget, for comparison). The output layer starts at zero, so training starts at the identity.

`stem: space_to_depth` runs the whole U-Net at half resolution. Conceptually PixelUnshuffle(2) folds
each 2x2 block of the face into 12 channels (3x256x256 -> 12x128x128) before a 3x3 conv, and the head
predicts 12 channels that PixelShuffle(2) unfolds into a full-resolution 3-channel residual, so every
output pixel still gets its own value while no feature map is at 256x256 (ESPCN, Shi et al. 2016,
for the sub-pixel head). Both are built as their exact single-layer equivalents: a 3x3 conv on the
unshuffled image is a 6x6 stride-2 conv on the image (padding 2), and a 1x1 conv + PixelShuffle(2)
is a 2x2 stride-2 transposed conv (with one bias per colour instead of per sub-pixel). Same function,
but ONNX Runtime then runs two convs instead of Reshape/Transpose/DepthToSpace copies of the image,
which were ~25% of its time at 256 (tests/test_models.py checks the equivalence). On 2 CPU cores the
full-resolution level (its concat, its depthwise transposed conv and the layout reorders around them)
was most of the latency of `stem: full`, the previous layout. `skip: add` sums each upsampled map
with its skip instead of concatenating it, which halves the decoder's input channels.

Constructor arguments are exactly the YAML keys under `model:` in configs/tinybeauty.yaml.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common import load_checkpoint
from errors import CheckpointError, ConfigError

BLOCKS = ("separable", "plain")
UPSAMPLES = ("separable", "transposed", "bilinear")
NORMS = ("batch", "none")
STEMS = ("full", "space_to_depth")
SKIPS = ("concat", "add")


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.Identity()


class ConvUnit(nn.Module):
    """One 3x3 conv -> norm -> ReLU; `separable` splits it into depthwise 3x3 + pointwise 1x1.

    `reads_image` with `stride` 2 is the space_to_depth stem: 3x3 on the 2x2-unshuffled image, built
    as the equivalent 6x6 stride-2 conv (padding 2).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        block: str,
        norm: str,
        reads_image: bool = False,
        stride: int = 1,
        dilation: int = 1,
    ):
        super().__init__()
        bias = norm == "none"
        if block == "separable" and not reads_image:
            self.conv = nn.Sequential(
                nn.Conv2d(in_ch, in_ch, 3, padding=dilation, dilation=dilation, groups=in_ch, bias=False),
                nn.Conv2d(in_ch, out_ch, 1, bias=bias),
            )
        elif reads_image:  # the layer reading the image stays a plain conv: a depthwise conv would see one
            # colour (or, after space_to_depth, one colour of one pixel of each 2x2 block) at a time
            self.conv = nn.Conv2d(in_ch, out_ch, 3 * stride, stride=stride, padding=stride, bias=bias)
        else:
            self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=bias)
        self.norm = _norm(norm, out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class DoubleConv(nn.Sequential):
    """Two conv units, as each U-Net level of the seed; `dilation` widens the second one's 3x3, `first_unit`
    (reads_image, stride) goes to the first."""

    def __init__(self, in_ch: int, out_ch: int, block: str, norm: str, dilation: int = 1, **first_unit):
        super().__init__(
            ConvUnit(in_ch, out_ch, block, norm, **first_unit),
            ConvUnit(out_ch, out_ch, block, norm, dilation=dilation),
        )


class Upsample(nn.Module):
    """x2 upsampling from `in_ch` to `out_ch` channels."""

    def __init__(self, in_ch: int, out_ch: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "transposed":  # the seed's layer: in_ch * out_ch * 4 weights
            self.layers = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        elif kind == "separable":  # 1x1 reduction, then one 2x2 kernel per channel
            self.layers = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1), nn.ConvTranspose2d(out_ch, out_ch, 2, stride=2, groups=out_ch)
            )
        else:  # bilinear: no learned upsampling, 1x1 reduction only
            self.layers = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "bilinear":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.layers(x)


class TinyBeauty(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, 3, H, W) in [-1, 1]; H and W divisible by 2 ** len(widths)."""

    def __init__(
        self,
        widths: list[int] | tuple[int, ...] = (16, 32, 64),
        bottleneck: int = 128,
        block: str = "separable",
        upsample: str = "separable",
        norm: str = "none",
        residual_scale: float = 1.0,
        stem: str = "full",
        skip: str = "concat",
        bottleneck_dilation: int = 1,
    ):
        # The defaults of `stem` and `skip` are the previous layout, so checkpoints saved before these
        # keys existed (their model_kwargs lack them) still build the same model; the config sets the new one.
        super().__init__()
        choices = (("block", block, BLOCKS), ("upsample", upsample, UPSAMPLES), ("norm", norm, NORMS),
                   ("stem", stem, STEMS), ("skip", skip, SKIPS))  # fmt: skip
        for key, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"model.{key} must be one of {', '.join(allowed)}, not '{value}'")
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1 or bottleneck < 1:
            raise ValueError(f"model.widths must be positive channel counts, got {widths}")
        if int(bottleneck_dilation) < 1:
            raise ValueError(f"model.bottleneck_dilation must be 1 or more, got {bottleneck_dilation}")
        self.widths, self.residual_scale, self.stem, self.skip = widths, float(residual_scale), stem, skip
        fold = 2 if stem == "space_to_depth" else 1  # the stem's stride: (B, 3, H, W) -> (B, w_0, H/2, W/2)

        chans = [3, *widths]
        self.encoders = nn.ModuleList(
            DoubleConv(chans[i], chans[i + 1], block, norm, reads_image=i == 0, stride=fold if i == 0 else 1)
            for i in range(len(widths))
        )
        self.pool = nn.MaxPool2d(2)
        # A dilated second conv at the coarsest level widens the receptive field at no cost in weights.
        self.bottleneck = DoubleConv(widths[-1], bottleneck, block, norm, dilation=int(bottleneck_dilation))
        deeper = [bottleneck, *reversed(widths)]  # channels coming up from below each level
        self.upsamples = nn.ModuleList(Upsample(deeper[i], deeper[i + 1], upsample) for i in range(len(widths)))
        merged = 2 if skip == "concat" else 1
        self.decoders = nn.ModuleList(
            DoubleConv(merged * deeper[i + 1], deeper[i + 1], block, norm) for i in range(len(widths))
        )
        # space_to_depth: 1x1 conv to 12 channels + PixelShuffle(2), as one 2x2 stride-2 transposed conv
        self.head = nn.ConvTranspose2d(widths[0], 3, 2, stride=2) if fold == 2 else nn.Conv2d(widths[0], 3, 1)
        # Zero-initialised output layer: the model starts as the identity (residual 0), so the first
        # steps refine the face instead of undoing random noise.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def downsample_factor(self) -> int:
        return 2 ** len(self.widths) * (2 if self.stem == "space_to_depth" else 1)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) face in [-1, 1] -> (B, 3, H, W) makeup residual (unclamped)."""
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)  # (B, w_i, H / 2^i, W / 2^i); H / 2^(i+1) with the space_to_depth stem
            x = self.pool(x)
        x = self.bottleneck(x)  # (B, bottleneck, H / 2^L, W / 2^L)
        for upsample, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = decoder(torch.cat([upsample(x), skip], dim=1) if self.skip == "concat" else upsample(x) + skip)
        residual = self.head(x)  # (B, 3, H, W)
        if self.residual_scale != 1.0:  # a Python-level check, so the exported graph has no Mul by 1
            residual = residual * self.residual_scale
        return residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.residual(x)).clamp(-1.0, 1.0)


MODELS = {"tinybeauty": TinyBeauty}


def count_macs(model: nn.Module, size: int = 256, channels: int = 3) -> int:
    """Multiply-accumulates of one (1, channels, size, size) forward pass, counted on conv and linear layers.

    Forward hooks read each layer's real input/output shapes, so grouped (depthwise) and transposed
    convs are counted correctly. Norms, activations, pooling and additions are left out, as usual.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):  # each input pixel scatters a kernel to out_ch/groups channels
            kh, kw = module.kernel_size
            total += inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Conv2d):  # each output pixel gathers in_ch/groups * kernel inputs
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros(1, channels, size, size, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(total)


def model_size_kb(num_params: int) -> dict[str, float]:
    """Weight storage at fp32, fp16 and int8 (parameters only; file formats add a few KB)."""
    return {name: round(num_params * nbytes / 1024, 1) for name, nbytes in (("fp32", 4), ("fp16", 2), ("int8", 1))}


def build_tinybeauty(model_kwargs: dict, arch: str = "tinybeauty") -> nn.Module:
    """A fresh model from the `model:` section of configs/tinybeauty.yaml (a bad value raises ConfigError)."""
    try:
        return MODELS[arch](**model_kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config key 'model': {err}") from None


def load_tinybeauty(checkpoint, device: str | torch.device = "cpu") -> nn.Module:
    """A TinyBeauty in eval mode from any tinybeauty_*.pt: a path (read without pickle, through
    `common.load_checkpoint`) or an already loaded checkpoint dict. Inference, export and benches use this."""

    if isinstance(checkpoint, dict):
        state, name = checkpoint, "checkpoint"
    else:
        state, name = load_checkpoint(checkpoint), str(checkpoint)
    if state.get("arch") not in MODELS or "model_kwargs" not in state or "model" not in state:
        raise CheckpointError(
            f"{name} is not a TinyBeauty checkpoint (arch {state.get('arch')!r}); expected tinybeauty_training.py output"
        )
    model = MODELS[state["arch"]](**state["model_kwargs"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()

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

The cheeks have a fourth weight. One weight for the whole skin has to choose between the blush, which
lies on the cheeks, and the DDA's grain everywhere else on the skin: on `berry_blush` it learns 0.09, and
the blush is gone (the DDA does paint it: on 60 unseen faces its skin change reaches 0.58 of the truth's
on the blush). So inside the skin the weight blends from `skin` to `cheeks` by a soft cheek map
(`cheek_map`: a Gaussian on each cheek, placed from the eyes and lips of the mask itself, so it needs no
landmarks and works on any pair folder's masks). With `cheeks` equal to `skin` the map is the old one, bit
for bit: a checkpoint saved before the cheeks existed loads with its skin weight there. An override of
`skin` without one of `cheeks` sets both (skin 0 still means no makeup on any skin).

A scalar weight can only scale the DDA's change, not turn it: the face prior's small VAE carries a lip's
lightness but hardly its hue (berry lips come out of it mauve, a blush peach), on the seeds as on new faces.
So each region may also hold a 3x3 colour matrix (`colour`, identity by default) that maps the change's RGB
(a row vector) before the weight: fitted after training on the DDA's own seed pairs (`fit_region_colour`,
`dda_training.py fgmm.colour`), divided by its gain along the change so that the weights keep the scale and
the matrix only turns it. Inside the skin the skin's and the cheeks' matrices blend by the cheek map, as
their weights do. Identity matrices leave the change bit for bit as it was.
"""

from __future__ import annotations

import torch
from torch import nn

REGIONS = ("eyes", "lips", "skin")  # labels 1, 2, 3 of the makeup mask
WEIGHTS = (*REGIONS, "cheeks")  # FGMM's weights: the three regions, and the cheeks inside the skin

# Where the cheek map sits, in the mask's own geometry (IOD: the distance between the two eye-region
# centroids; h: from their midpoint down to the lips' centroid). Measured on 40 faces of ../shared/data/faces
# against MediaPipe's cheek landmarks 205 and 425 (where data/makeup_render.py centres a template's blush):
# 0.64 h down (sd 0.02) and 0.14 IOD out (sd 0.03) from each eye's centroid. The radius (Gaussian sigma,
# cut at 3 sigma) is 0.2 IOD: a template's blush of size 0.14 has 0.16, a wider one lies partly outside.
CHEEK_DOWN, CHEEK_OUT, CHEEK_SIGMA = 0.64, 0.14, 0.2
CHEEK_CORE = 0.3  # the cheek map's value from which a skin pixel counts as cheek in the colour fit

# A colour matrix whose gain along the seeds' change is below this says the region's change is not the
# target's (noise): that region keeps the identity.
MIN_COLOUR_GAIN = 0.05


def check_region_names(names) -> None:
    """A ValueError naming the first of `names` that is not one of FGMM's weights."""
    for name in names:
        if name not in WEIGHTS:
            raise ValueError(f"unknown FGMM region '{name}' (expected one of {', '.join(WEIGHTS)})")


def cheek_map(makeup_mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) labels -> (B, 1, H, W) in [0, 1]: a Gaussian on each cheek, inside the skin (label 3) only.

    Placed from the mask: the eye region's pixels split into two eyes at their mean x, the lips' centroid
    gives the face's downward axis. A mask without two eyes and lips gets no cheeks (zeros). Written without
    data-dependent shapes or branches, so it also runs on the meta device (bench/meta_accounting.py).
    """
    mask = makeup_mask.long()
    _, height, width = mask.shape
    ys = torch.arange(height, dtype=torch.float32, device=mask.device).view(1, height, 1)
    xs = torch.arange(width, dtype=torch.float32, device=mask.device).view(1, 1, width)

    def centroid(region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = region.sum((1, 2))
        x = (region * xs).sum((1, 2)) / count.clamp_min(1)
        y = (region * ys).sum((1, 2)) / count.clamp_min(1)
        return torch.stack([x, y], 1), count

    eyes = (mask == 1).float()
    middle, _ = centroid(eyes)
    first_side = eyes * (xs < middle[:, :1, None]).float()
    first, first_count = centroid(first_side)
    second, second_count = centroid(eyes - first_side)
    lips, lips_count = centroid((mask == 2).float())
    across = second - first
    iod = across.norm(dim=1)
    across = across / iod.clamp_min(1e-6)[:, None]
    down = torch.stack([-across[:, 1], across[:, 0]], 1)
    drop = ((lips - (first + second) / 2) * down).sum(1)
    down = torch.where((drop < 0)[:, None], -down, down)
    drop = drop.abs()
    sigma = (CHEEK_SIGMA * iod).clamp_min(1e-6)[:, None, None]
    blob = torch.zeros_like(eyes)
    for eye, side in ((first, -1.0), (second, 1.0)):
        centre = eye + CHEEK_DOWN * drop[:, None] * down + side * CHEEK_OUT * iod[:, None] * across
        d2 = (xs - centre[:, :1, None]) ** 2 + (ys - centre[:, 1:, None]) ** 2
        blob = torch.maximum(blob, torch.where(d2 < (3 * sigma) ** 2, torch.exp(-d2 / (2 * sigma**2)), 0.0))
    found = (first_count >= 1) & (second_count >= 1) & (lips_count >= 1) & (iod >= 1)
    return (blob * (mask == 3) * found[:, None, None]).unsqueeze(1)


class FGMM(nn.Module):
    def __init__(self, eyes: float = 1.0, lips: float = 1.0, skin: float = 1.0, cheeks: float | None = None):
        super().__init__()
        cheeks = skin if cheeks is None else cheeks
        self.region_weights = nn.Parameter(torch.tensor([eyes, lips, skin, cheeks], dtype=torch.float32))
        # one 3x3 matrix per weight (eyes, lips, skin, cheeks), applied as change_rgb @ matrix; fitted, not trained
        self.register_buffer("colour", torch.eye(3).repeat(len(WEIGHTS), 1, 1))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "region_weights"
        saved = state_dict.get(key)
        if saved is not None and saved.shape == (len(REGIONS),):  # saved before the cheeks: they follow the skin
            state_dict[key] = torch.cat([saved, saved[-1:]])
        if saved is not None and prefix + "colour" not in state_dict:  # saved before the colour matrices
            state_dict[prefix + "colour"] = torch.eye(3).repeat(len(WEIGHTS), 1, 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def colours(self) -> dict[str, list[list[float]]]:
        """The colour matrices that are not the identity, by region name (JSON-friendly)."""
        eye = torch.eye(3)
        return {
            name: [[float(v) for v in row] for row in matrix]
            for name, matrix in zip(WEIGHTS, self.colour.detach().cpu())
            if not torch.equal(matrix, eye)
        }

    def set_colours(self, matrices: dict[str, object] | None) -> None:
        """Set the named regions' colour matrices (3x3 each); every other region gets the identity."""
        matrices = dict(matrices or {})
        check_region_names(matrices)
        table = torch.eye(3).repeat(len(WEIGHTS), 1, 1)
        for name, matrix in matrices.items():
            matrix = torch.as_tensor(matrix, dtype=torch.float32)
            if matrix.shape != (3, 3):
                raise ValueError(f"the colour matrix of '{name}' must be 3x3, not {tuple(matrix.shape)}")
            table[WEIGHTS.index(name)] = matrix
        with torch.no_grad():
            self.colour.copy_(table.to(self.colour.device))

    def recolour(self, change: torch.Tensor, makeup_mask: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) change -> each region's change times its colour matrix; `change` itself where all are identity.

        The skin's pixels blend the skin's and the cheeks' matrices by `cheek_map`; background is left as it is.
        """
        eye = torch.eye(3, device=self.colour.device)
        custom = [not torch.equal(matrix, eye) for matrix in self.colour]
        if not any(custom):
            return change
        labels = makeup_mask.long().to(change.device)
        colour = self.colour.to(change)

        def turned(name: str) -> torch.Tensor:
            return torch.einsum("bchw,cd->bdhw", change, colour[WEIGHTS.index(name)])

        result = change
        for index, name in enumerate(REGIONS, start=1):
            if not (custom[WEIGHTS.index(name)] or (name == "skin" and custom[WEIGHTS.index("cheeks")])):
                continue
            mapped = turned(name)
            if name == "skin" and custom[WEIGHTS.index("cheeks")]:
                cheek = cheek_map(labels).to(change)
                mapped = mapped + cheek * (turned("cheeks") - mapped)
            result = torch.where((labels == index).unsqueeze(1), mapped, result)
        return result

    @staticmethod
    def _checked(overrides: dict[str, float] | None) -> dict[str, float]:
        overrides = dict(overrides or {})
        check_region_names(overrides)
        if "skin" in overrides and "cheeks" not in overrides:
            overrides["cheeks"] = overrides["skin"]
        return overrides

    def weights(self, overrides: dict[str, float] | None = None) -> dict[str, float]:
        """The effective per-region weights as plain floats (learned, with `overrides` on top)."""
        current = {name: float(w) for name, w in zip(WEIGHTS, self.region_weights.detach().cpu())}
        current.update({name: float(value) for name, value in self._checked(overrides).items()})
        return current

    def weight_map(self, makeup_mask: torch.Tensor, overrides: dict[str, float] | None = None) -> torch.Tensor:
        """(B, H, W) labels 0-3 -> (B, 1, H, W) per-pixel weight: 0 on background, the region's weight elsewhere,
        on the skin blended toward the cheeks' weight by `cheek_map`.

        Without overrides the map is differentiable in the learned weights.
        """
        table = self.region_weights
        overrides = self._checked(overrides)
        if overrides:
            table = table.clone()
            for name, value in overrides.items():
                table = table.index_fill(0, torch.tensor(WEIGHTS.index(name), device=table.device), float(value))
        lookup = torch.cat([table.new_zeros(1), table[: len(REGIONS)]])  # index 0 = background
        labels = makeup_mask.long().clamp(0, len(REGIONS))
        weight = lookup[labels].unsqueeze(1)
        skin, cheeks = table[WEIGHTS.index("skin")], table[WEIGHTS.index("cheeks")]
        # equal and not training: the map is the three regions' exactly (training: the cheeks' weight gets its gradient)
        if (torch.is_grad_enabled() and table.requires_grad) or bool(cheeks != skin):
            weight = weight + (cheeks - skin) * cheek_map(labels).to(weight)
        return weight

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

    On the skin the skin's and the cheeks' gains are fitted together, as FGMM applies them: the target
    change ~ change * (g_skin (1 - c) + g_cheeks c) with c the cheek map (two-parameter least squares). A mask
    without cheeks gives the cheeks None.
    """
    gains: dict[str, float | None] = {}
    for index, region in enumerate(REGIONS, start=1):
        inside = (makeup_mask == index).unsqueeze(1).expand_as(change)
        made, wanted = change[inside].double(), target_change[inside].double()
        energy = float((made * made).sum())
        gains[region] = float((made * wanted).sum()) / energy if made.numel() and energy > 1e-12 else None
    skin = (makeup_mask == REGIONS.index("skin") + 1).unsqueeze(1).expand_as(change)
    cheek = cheek_map(makeup_mask).to(change).expand_as(change)[skin].double()
    made, wanted = change[skin].double(), target_change[skin].double()
    features = torch.stack([made * (1 - cheek), made * cheek], 1)
    gram = features.T @ features
    gains["cheeks"] = None
    if made.numel() and float(gram[1, 1]) > 1e-12 and float(torch.linalg.det(gram)) > 1e-12 * float(gram.trace()) ** 2:
        skin_gain, cheek_gain = torch.linalg.solve(gram, features.T @ wanted).tolist()
        gains["skin"], gains["cheeks"] = skin_gain, cheek_gain
    return gains


def fit_region_colour(
    change: torch.Tensor, target_change: torch.Tensor, makeup_mask: torch.Tensor, regions=("eyes", "lips", "cheeks")
) -> dict[str, list[list[float]] | None]:
    """Per region the 3x3 matrix A with change @ A closest to target_change (least squares over the region's pixels,
    RGB as row vectors), divided by its gain along the change (<change @ A, change> / <change, change>).

    So A only turns the change's colour and keeps its size: the FGMM weights (learned or calibrated) keep the
    scale. change, target_change: (B, 3, H, W); makeup_mask (B, H, W) labels. `cheeks`: the skin pixels where the
    cheek map is at least CHEEK_CORE. None where a region is empty, its change is zero or unrelated to the target
    (gain below MIN_COLOUR_GAIN), or the fit is singular (a change along fewer than three colour directions).
    """
    check_region_names(regions)
    labels = makeup_mask.long()
    fits: dict[str, list[list[float]] | None] = {}
    for name in regions:
        if name == "cheeks":
            inside = (cheek_map(labels)[:, 0] >= CHEEK_CORE) & (labels == REGIONS.index("skin") + 1)
        else:
            inside = labels == REGIONS.index(name) + 1
        made = change.permute(0, 2, 3, 1)[inside].double()  # (N, 3)
        wanted = target_change.permute(0, 2, 3, 1)[inside].double()
        fits[name] = None
        gram = made.T @ made
        energy = float(gram.trace())
        if made.shape[0] < 3 or energy <= 1e-12 or float(torch.linalg.det(gram)) <= 1e-12 * energy**3:
            continue
        matrix = torch.linalg.solve(gram, made.T @ wanted)
        gain = float(((made @ matrix) * made).sum()) / energy
        if gain < MIN_COLOUR_GAIN:
            continue
        fits[name] = (matrix / gain).tolist()
    return fits

"""The eyeliner loss's properties (issue 2) and the L1 term."""

from __future__ import annotations

import pytest
import torch

from losses import EyelinerLoss, L1Loss


def _eyeliner_image(shift: int = 0, blur: bool = False) -> torch.Tensor:
    """A grey face-ish image with one dark horizontal 'eyeliner' stroke at row 20 (+shift)."""
    image = torch.full((1, 3, 48, 48), 0.4)
    image[:, :, 20 + shift : 22 + shift, 10:30] = -0.8
    if blur:
        kernel = torch.ones(3, 1, 5, 5) / 25
        image = torch.nn.functional.conv2d(
            torch.nn.functional.pad(image, (2, 2, 2, 2), mode="replicate"), kernel, groups=3
        )
    return image


def _eye_mask() -> torch.Tensor:
    mask = torch.full((1, 48, 48), 3, dtype=torch.long)
    mask[:, 14:30, 6:34] = 1
    return mask


def test_zero_for_identical_images():
    loss = EyelinerLoss(weight=1.0)
    image = _eyeliner_image()
    assert loss(image, image).item() < 1e-5
    assert loss(image, image, _eye_mask()).item() < 1e-5


def test_grows_when_the_line_is_blurred_or_shifted():
    loss = EyelinerLoss(weight=1.0)
    target, mask = _eyeliner_image(), _eye_mask()
    blurred = loss(_eyeliner_image(blur=True), target, mask).item()
    shifted1 = loss(_eyeliner_image(shift=1), target, mask).item()
    shifted3 = loss(_eyeliner_image(shift=3), target, mask).item()
    assert blurred > 0.05
    assert 0 < shifted1 < shifted3


def test_ignores_edges_outside_the_eye_region_with_a_mask():
    loss = EyelinerLoss(weight=1.0)
    target, mask = _eyeliner_image(), _eye_mask()
    pred = target.clone()
    pred[:, :, 40:44, 10:30] = -0.8  # a new edge far from the eye region (a "lip" line)
    assert loss(pred, target, mask).item() < 1e-5
    assert loss(pred, target).item() > 1e-3  # without a mask the whole image counts


def test_samples_without_mask_use_whole_image():
    loss = EyelinerLoss(weight=1.0)
    target = _eyeliner_image()
    pred = target.clone()
    pred[:, :, 40:44, 10:30] = -0.8
    mask = _eye_mask()
    assert loss(pred, target, mask, has_mask=torch.tensor([False])).item() > 1e-3


def test_weights_scale_terms():
    a, b = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    assert L1Loss(weight=2.0)(a, b).item() == 2.0
    assert EyelinerLoss(weight=0.0)(_eyeliner_image(shift=2), _eyeliner_image()).item() == 0.0
    pixel_weight = torch.zeros(1, 1, 8, 8)
    pixel_weight[..., :4, :] = 1
    b2 = b.clone()
    b2[..., :4, :] = 0
    assert L1Loss()(a, b2, pixel_weight).item() == 0.0


def test_per_sample_mean_when_masked_and_unmasked_samples_mix():
    """Each sample counts once: an unmasked sample's 2,304 pixels do not swamp another's 448-pixel eye region."""
    loss = EyelinerLoss(weight=1.0)
    target = _eyeliner_image()
    blurred = _eyeliner_image(blur=True)  # an error inside the eye region
    masked_alone = loss(blurred, target, _eye_mask(), torch.tensor([True])).item()
    assert masked_alone > 0.05

    pred, targets = torch.cat([blurred, target]), torch.cat([target, target])  # the unmasked sample is exact
    mask = torch.cat([_eye_mask(), torch.zeros(1, 48, 48, dtype=torch.long)])
    mixed = loss(pred, targets, mask, has_mask=torch.tensor([True, False])).item()
    # The old pixel-pooled mean gave masked_alone x 448 / (448 + 2304), about a sixth of it.
    assert mixed == pytest.approx(masked_alone / 2, rel=1e-5)

    # Two masked samples with eye regions of different sizes: the mean of their own means.
    small_mask = torch.full((1, 48, 48), 3, dtype=torch.long)
    small_mask[:, 18:24, 8:32] = 1
    shifted = _eyeliner_image(shift=1)
    alone = [loss(blurred, target, _eye_mask()).item(), loss(shifted, target, small_mask).item()]
    both = loss(torch.cat([blurred, shifted]), torch.cat([target, target]), torch.cat([_eye_mask(), small_mask]))
    assert both.item() == pytest.approx(sum(alone) / 2, rel=1e-5)


def test_samples_with_a_mask_but_no_eye_pixels_are_left_out():
    loss = EyelinerLoss(weight=1.0)
    target = _eyeliner_image()
    pred = _eyeliner_image(shift=2).requires_grad_()
    no_eyes = torch.full((1, 48, 48), 3, dtype=torch.long)  # a mask without label 1
    masked_alone = loss(pred, target, _eye_mask()).item()
    batch = loss(torch.cat([pred, pred]), torch.cat([target, target]), torch.cat([_eye_mask(), no_eyes]))
    assert batch.item() == pytest.approx(masked_alone, rel=1e-5)  # not halved by the eyeless sample

    nothing = loss(pred, target, no_eyes)
    assert nothing.item() == 0.0
    nothing.backward()  # still in the graph: a batch of eyeless faces does not break a training step
    assert pred.grad is not None and pred.grad.abs().max() == 0


def test_charbonnier_lets_tiny_residuals_go_and_acts_as_l1_on_large_ones():
    """Plain L1 pulls a pixel the target leaves unchanged back with a full unit gradient however small its
    residual (what held TinyBeauty at the identity on sparse makeup); Charbonnier's pull fades to zero."""
    from losses.l1 import L1Loss

    target = torch.zeros(1, 3, 8, 8)
    tiny = torch.full_like(target, 1e-3, requires_grad=True)
    L1Loss()(tiny, target).backward()
    l1_grad = tiny.grad.abs().max().item()
    tiny.grad = None
    L1Loss(eps=0.05)(tiny, target).backward()
    assert tiny.grad.abs().max().item() < 0.05 * l1_grad
    large = torch.full_like(target, 0.8)
    assert abs(L1Loss(eps=0.05)(large, target).item() - 0.8) < 0.06


def _region_batch(has_mask: bool = True) -> dict:
    """Two 8x8 faces: a lip patch (label 2) in a skin face (label 3); the error sits on the lips only."""
    mask = torch.full((2, 8, 8), 3, dtype=torch.long)
    mask[:, 2:4, 2:6] = 2
    target = torch.zeros(2, 3, 8, 8)
    target[:, :, 2:4, 2:6] = 0.5
    return {"target": target, "mask": mask, "has_mask": torch.tensor([has_mask, has_mask])}


def test_region_weights_scale_the_lips_share_of_the_l1():
    from losses.tinybeauty import TinyBeautyLoss

    batch, pred = _region_batch(), torch.zeros(2, 3, 8, 8)  # wrong only on the lips (8 of 64 pixels)
    plain, _ = TinyBeautyLoss(eyeliner=0)(pred, batch)
    weighted, _ = TinyBeautyLoss(eyeliner=0, region_weights={"lips": 4})(pred, batch)
    assert plain.item() == pytest.approx(0.5 * 8 / 64)
    assert weighted.item() == pytest.approx(0.5 * 4 * 8 / (4 * 8 + 56))  # normalised by the weights' sum
    unmasked, _ = TinyBeautyLoss(eyeliner=0, region_weights={"lips": 4})(pred, _region_batch(has_mask=False))
    assert unmasked.item() == pytest.approx(plain.item())  # no mask: plain L1


def test_region_weights_reject_unknown_regions_and_negative_weights():
    from errors import ConfigError
    from losses.tinybeauty import TinyBeautyLoss

    with pytest.raises(ConfigError, match="loss.region_weights.nose"):
        TinyBeautyLoss(region_weights={"nose": 2})
    with pytest.raises(ConfigError, match="loss.region_weights.lips"):
        TinyBeautyLoss(region_weights={"lips": -1})


def test_diffusion_region_weights_weigh_the_noise_mse_per_latent_cell():
    """All-1 weights are the plain MSE; a lips weight scales the cells that cover lip pixels."""
    from errors import ConfigError
    from losses.dda import DDALoss

    mask = torch.full((1, 8, 8), 3, dtype=torch.long)
    mask[:, 2:4, 2:4] = 2  # lip pixels, all inside latent cell (1, 1) of a 4x4 grid
    pred, target = torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4)
    pred[:, :, 1, 1] = 1.0  # wrong in the lip cell only
    pred[:, :, 3, 3] = 1.0  # and in one skin cell
    plain = DDALoss().diffusion_mse(pred, target, mask)
    assert plain.item() == pytest.approx(torch.nn.functional.mse_loss(pred, target).item())
    assert DDALoss(diffusion_region_weights={"lips": 1}).diffusion_mse(pred, target, mask).item() == pytest.approx(
        plain.item()
    )
    weighted = DDALoss(diffusion_region_weights={"lips": 5}).diffusion_mse(pred, target, mask)
    assert weighted.item() == pytest.approx((5 + 1) / (5 + 15))  # per channel: errors 5*1 + 1*1 over weights 5 + 15
    with pytest.raises(ConfigError, match="loss.diffusion_region_weights.nose"):
        DDALoss(diffusion_region_weights={"nose": 2})

"""The eyeliner loss's properties (issue 2) and the L1 term."""

from __future__ import annotations

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

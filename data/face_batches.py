"""Batches of aligned faces for the face prior: uint8 crops to model tensors, random flips and colour jitter."""

from __future__ import annotations

import math

import torch


def to_model(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    return images_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def random_batch(images: torch.Tensor, batch_size: int, generator: torch.Generator, hflip: bool) -> torch.Tensor:
    index = torch.randint(len(images), (batch_size,), generator=generator)
    batch = to_model(images[index])
    if hflip:
        flip = torch.rand(batch_size, generator=generator) < 0.5
        batch[flip] = batch[flip].flip(-1)
    return batch


def colour_jitter(
    batch: torch.Tensor, fraction: float, generator: torch.Generator, return_picked: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Rotate the hue and scale the saturation of a share of the images (YIQ chroma plane).

    `return_picked`: also the (B,) bool mask of the images that were changed (the rest come back as they were).
    """
    if fraction <= 0:
        return (batch, torch.zeros(batch.shape[0], dtype=torch.bool)) if return_picked else batch
    b = batch.shape[0]
    pick = (torch.rand(b, generator=generator) < fraction).view(b, 1, 1)
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.pi
    saturation = torch.exp((torch.rand(b, generator=generator) * 2 - 1) * math.log(2.0))
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    cos, sin = torch.cos(angle) * saturation, torch.sin(angle) * saturation
    chroma = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    mix = torch.eye(3).repeat(b, 1, 1)
    mix[:, 1:, 1:] = chroma
    mix = torch.where(pick, mix, torch.eye(3).expand(b, 3, 3))
    transform = torch.linalg.inv(to_yiq) @ mix @ to_yiq  # (B, 3, 3) in RGB
    out = torch.where(pick.view(b, 1, 1, 1), torch.einsum("bij,bjhw->bihw", transform, batch).clamp(-1, 1), batch)
    return (out, pick.view(b)) if return_picked else out

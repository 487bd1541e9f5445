"""bench/dal_eval.py's VAE ceiling: what a perfect latent edit could reach through a base model's VAE."""

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from bench.dal_eval import vae_ceiling


class IdentityVAE(nn.Module):
    """encode/decode with diffusers' interface that lose nothing: the ceiling is then set by resolution alone."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def encode(self, images):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=images))

    def decode(self, latents):
        return SimpleNamespace(sample=latents)


def _pair(seed: int, size: int = 32):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 60, size)[None, :, None] + np.linspace(0, 30, size)[:, None, None]
    source = (rng.integers(60, 140, 3)[None, None] + ramp).astype(np.uint8)  # smooth skin-like shading
    mask = np.zeros((size, size), np.uint8)
    mask[20:26, 10:22] = 2  # lips
    mask[8:11, 6:14] = 1  # a thin eye band
    target = source.copy()
    target[mask == 2] = (0.4 * target[mask == 2] + 0.6 * np.array([200, 20, 40])).astype(np.uint8)
    target[8:9, 6:14] = 10  # a 1-px liner
    return source, target, mask


def test_a_lossless_vae_at_full_size_reaches_the_truth():
    pairs = {f"f{i}": _pair(i) for i in range(3)}
    result = vae_ceiling(IdentityVAE(), pairs, 32)
    assert result["r2"] == 1.0 and result["r2_lips"] == 1.0 and result["r2_eyes"] == 1.0
    assert result["resolution"] == 32


def test_half_resolution_loses_the_thin_liner_and_background_stays_the_source():
    pairs = {f"f{i}": _pair(i) for i in range(3)}
    half = vae_ceiling(IdentityVAE(), pairs, 16)
    assert half["r2"] < 0.95 and half["r2_lips"] < 1.0
    assert half["r2_eyes"] < 0.5  # a 1-px line does not survive 16 px and back
    # Outside the makeup labels the prediction is the source: PSNR against the truth stays finite and above identity.
    assert half["psnr_db"] > half["identity_psnr_db"]

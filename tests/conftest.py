"""Shared fixtures: paths to the shared data and small synthetic pair sets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (DEVELOPERS.md); SHARED_DATA overrides it.
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))
SAMPLE_FACES = REPO / "data" / "samples" / "faces"


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the tiny diffusion model: on two shared cores more threads make it
    many times slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


@pytest.fixture(scope="session")
def shared_pairs() -> Path:
    return _need(SHARED_DATA / "pairs_style1")


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    return _need(SHARED_DATA / "faces")


def write_synthetic_pairs(root: Path, n: int = 6, size: int = 64, with_mask: bool = True, seed: int = 0) -> Path:
    """n pairs of smooth random 'faces' whose target darkens the mask's lip and eye regions."""
    rng = np.random.default_rng(seed)
    for sub in ("source", "target", "mask"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = rng.integers(60, 200, size=(8, 8, 3)).astype(np.uint8)
        source = np.asarray(Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC))
        mask = np.zeros((size, size), np.uint8)
        mask[size // 8 : size - size // 8, size // 8 : size - size // 8] = 3
        mask[size // 4 : size // 4 + size // 8, size // 5 : size // 2 - 2] = 1
        mask[3 * size // 4 - size // 16 : 3 * size // 4, size // 3 : 2 * size // 3] = 2
        target = source.astype(np.int16)
        target[mask == 2] = (target[mask == 2] * [1.0, 0.5, 0.5]).astype(np.int16)
        target[mask == 1] -= 40
        target = target.clip(0, 255).astype(np.uint8)
        Image.fromarray(source).save(root / "source" / f"face{i:03d}.png")
        Image.fromarray(target).save(root / "target" / f"face{i:03d}.png")
        if with_mask:
            Image.fromarray(mask).save(root / "mask" / f"face{i:03d}.png")
    return root


@pytest.fixture
def synthetic_pairs(tmp_path: Path) -> Path:
    return write_synthetic_pairs(tmp_path / "pairs")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """The random tiny SD-1.5-shaped model (shapes only: it makes noise, not faces)."""
    from models.tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "model")


@pytest.fixture(scope="session")
def pairs5(tmp_path_factory) -> Path:
    """Five synthetic 32x32 pairs (the DDA tests' resolution)."""
    return write_synthetic_pairs(tmp_path_factory.mktemp("pairs") / "pairs", n=5, size=32)

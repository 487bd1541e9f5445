"""Config loading, atomic writes, metrics: the shared module every stage uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from common import ConfigError, atomic_write_text, load_config, make_grid, psnr, ssim

DEFAULT = """
seed: 0
output_dir: out/
data: {root: pairs, size: 256}
train: {epochs: 50, lr: 2.0e-4, amp: false, widths: [16, 32]}
wandb: {mode: offline}
optional_path: null
"""


@pytest.fixture
def default_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "default.yaml"
    path.write_text(DEFAULT)
    return path


def test_overrides_apply_with_types(default_yaml):
    cfg = load_config(default_yaml, ["train.epochs=2", "train.lr=1e-3", "train.amp=true", "data.root=/x"])
    assert cfg.train.epochs == 2 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.amp is True
    assert cfg.data.root == "/x"
    assert cfg.data.size == 256  # untouched keys keep their defaults


@pytest.mark.parametrize(
    "override, key",
    [("train.epoch=3", "train.epoch"), ("train.epochs=abc", "train.epochs"), ("nope=1", "nope")],
)
def test_unknown_key_or_wrong_type_names_the_key(default_yaml, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(default_yaml, [override])


def test_override_without_equals_is_rejected(default_yaml):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(default_yaml, ["train.epochs"])


def test_second_config_file_is_checked_against_the_schema(default_yaml, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("train: {epochs: 3}\n")
    assert load_config(default_yaml, [], other).train.epochs == 3
    other.write_text("train: {epochz: 3}\n")
    with pytest.raises(ConfigError, match="epochz"):
        load_config(default_yaml, [], other)


def test_null_default_takes_any_value(default_yaml):
    assert load_config(default_yaml, ["optional_path=some/dir"]).optional_path == "some/dir"


def test_atomic_write_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]
    # the mode a plain open() would give, not mkstemp's owner-only 0600
    assert target.stat().st_mode & 0o777 == 0o666 & ~_current_umask()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_psnr_and_ssim():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.isinf(psnr(image, image)).logical_not().all()  # clamped, finite
    assert psnr(image, image).min() > 100
    noisy = image + 0.1 * torch.randn_like(image)
    # MSE of 0.01 on a range of 2 -> 10*log10(4/0.01) = 26 dB
    assert psnr(noisy, image).mean().item() == pytest.approx(26.0, abs=0.3)
    assert ssim(image, image).min().item() == pytest.approx(1.0, abs=1e-4)
    assert ssim(noisy, image).max().item() < 0.99


def test_make_grid_shape():
    cell = torch.zeros(8, 10, 3, dtype=torch.uint8).numpy()
    grid = make_grid([[cell, cell, cell], [cell, cell, cell]], pad=2)
    assert grid.size == (3 * 12 + 2, 2 * 10 + 2)


def test_config_mapping_layer_is_checked_like_a_file(default_yaml):
    # what --resume passes: the config saved in a checkpoint
    assert load_config(default_yaml, ["train.lr=0.5"], {"train": {"epochs": 7}}).train.epochs == 7
    with pytest.raises(ConfigError, match="epochz"):
        load_config(default_yaml, [], {"train": {"epochz": 7}})

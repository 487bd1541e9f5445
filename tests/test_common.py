"""Config loading, atomic writes, metrics: the shared module every stage uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from common import ConfigError, atomic_write_text, load_config, make_grid, psnr, ssim
from tests.conftest import REPO

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


def _enumerated_keys() -> list[tuple[str, str, str]]:
    """(default config, key, value) for every value of every enumerated key, from the code's own lists."""
    import dda_training
    import tinybeauty_training
    from data import makeup_draft
    from models import tinybeauty
    from models.dda import SCHEDULERS
    from models.dda_io import AMPLIFIERS

    tb, dda, amp = "configs/tinybeauty.yaml", "configs/dda.yaml", "configs/dda_amplify.yaml"
    table = {
        (tb, "model.block"): tinybeauty.BLOCKS, (tb, "model.upsample"): tinybeauty.UPSAMPLES,
        (tb, "model.norm"): tinybeauty.NORMS, (tb, "model.stem"): tinybeauty.STEMS, (tb, "model.skip"): tinybeauty.SKIPS,
        (tb, "train.scheduler"): tinybeauty_training.LR_SCHEDULERS, (tb, "train.device"): ("auto", "cpu", "cuda"),
        (tb, "wandb.mode"): ("offline", "online", "disabled"),
        (dda, "model.mixed_precision"): dda_training.MIXED_PRECISION, (dda, "diffusion.scheduler"): SCHEDULERS,
        (dda, "train.device"): ("auto", "cpu", "cuda"), (dda, "wandb.mode"): ("offline", "online", "disabled"),
        (amp, "scheduler"): SCHEDULERS, (amp, "model.dtype"): ("auto", "float32", "float16", "bfloat16"),
        (dda, "amplifier"): AMPLIFIERS, (amp, "amplifier"): AMPLIFIERS, (dda, "draft.space"): makeup_draft.SPACES,
        (dda, "draft.combine"): makeup_draft.COMBINES,
    }  # fmt: skip
    return [(config, key, value) for (config, key), values in table.items() for value in values]


@pytest.mark.parametrize("config,key,value", _enumerated_keys())
def test_every_enumerated_value_arrives_as_typed_on_the_command_line(config, key, value):
    from omegaconf import OmegaConf

    cfg = load_config(REPO / config, [f"{key}={value}"])
    assert OmegaConf.select(cfg, key) == value


def test_mixed_precision_no_from_the_command_line_and_from_a_yaml_file(tmp_path):
    """`model.mixed_precision=no` as a new user types it (YAML 1.1 reads a bare no as false)."""
    import dda_training

    for word in ("no", "No", "off"):
        cfg = load_config(dda_training.DEFAULT_CONFIG, [f"model.mixed_precision={word}"])
        assert dda_training.mixed_precision(cfg) == "no"
    layer = tmp_path / "mine.yaml"
    layer.write_text("model:\n  mixed_precision: no\n")
    assert dda_training.mixed_precision(load_config(dda_training.DEFAULT_CONFIG, [], layer)) == "no"
    with pytest.raises(ConfigError, match="model.mixed_precision' must be fp16 or no"):
        dda_training.mixed_precision(load_config(dda_training.DEFAULT_CONFIG, ["model.mixed_precision=bf16"]))
    # a bool-typed key still takes the YAML words as bools
    assert load_config(REPO / "configs" / "tinybeauty.yaml", ["data.hflip=no"]).data.hflip is False

"""TinyBeauty: shapes, identity at start, the parameter/MAC budget, and the MAC counter itself."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from common import REPO_ROOT, count_parameters, load_config
from models.tinybeauty import MODELS, TinyBeauty, count_macs, model_size_kb

CONFIG = REPO_ROOT / "configs" / "tinybeauty.yaml"


def default_model() -> TinyBeauty:
    return TinyBeauty(**load_config(CONFIG).model)


def test_constructor_arguments_are_exactly_the_config_keys():
    keys = set(load_config(CONFIG).model.keys())
    assert keys == set(inspect.signature(TinyBeauty.__init__).parameters) - {"self"}
    assert MODELS["tinybeauty"] is TinyBeauty


def test_default_model_is_within_the_budget():
    model = default_model()
    assert count_parameters(model) <= 80_000  # the paper's 0.08M
    assert count_macs(model, 256) <= 0.5e9
    assert model_size_kb(count_parameters(model))["int8"] < 100


def test_seed_layers_are_over_budget_so_the_budget_check_can_fail():
    seed_like = TinyBeauty(block="plain", upsample="transposed")
    assert count_parameters(seed_like) > 400_000


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 32, 48)])
def test_shapes_and_range(shape):
    model = default_model()
    with torch.no_grad():
        nn.init.normal_(model.head.weight, std=1.0)  # a non-trivial residual
        x = torch.rand(shape) * 2 - 1
        residual, out = model.residual(x), model(x)
    assert residual.shape == out.shape == x.shape
    assert out.min() >= -1 and out.max() <= 1
    assert torch.allclose(out, (x + residual).clamp(-1, 1))
    assert residual.abs().max() > 0.01


def test_starts_as_the_identity():
    model = default_model()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x), x)
        assert model.residual(x).abs().max() == 0


def test_gradients_reach_every_layer_after_one_step():
    model = default_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    for _ in range(2):  # step 1 moves the zero head, step 2 lets gradients flow below it
        optimizer.zero_grad()
        (model(x) - target).abs().mean().backward()
        optimizer.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("key, value", [("block", "fancy"), ("upsample", "pixelshuffle"), ("norm", "layer")])
def test_unknown_choices_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"model.{key}"):
        TinyBeauty(**{key: value})


def test_mac_counter_on_known_layers():
    conv = nn.Conv2d(3, 16, 3, padding=1)
    assert count_macs(conv, size=8) == 8 * 8 * 16 * 3 * 9
    depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    assert count_macs(depthwise, size=8, channels=4) == 8 * 8 * 4 * 9
    up = nn.ConvTranspose2d(4, 2, 2, stride=2)
    assert count_macs(up, size=8, channels=4) == 8 * 8 * 4 * 2 * 4

"""TinyBeauty: shapes, identity at start, the parameter/MAC budget, old checkpoints, ONNX parity, the MAC counter."""

from __future__ import annotations

import inspect
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common import REPO_ROOT, count_parameters, load_config
from models.tinybeauty import MODELS, TinyBeauty, count_macs, model_size_kb

CONFIG = REPO_ROOT / "configs" / "tinybeauty.yaml"


STEMS = ["space_to_depth", "full"]
# model_kwargs of a checkpoint saved before `stem` and `skip` existed (the previous default config)
OLD_KWARGS = {"widths": [16, 32, 64], "bottleneck": 128, "block": "separable", "upsample": "separable",
              "norm": "none", "residual_scale": 1.0}  # fmt: skip


def default_model(**overrides) -> TinyBeauty:
    return TinyBeauty(**{**load_config(CONFIG).model, **overrides})


def test_constructor_arguments_are_exactly_the_config_keys():
    keys = set(load_config(CONFIG).model.keys())
    assert keys == set(inspect.signature(TinyBeauty.__init__).parameters) - {"self"}
    assert MODELS["tinybeauty"] is TinyBeauty


@pytest.mark.parametrize("stem", STEMS)
def test_default_model_is_within_the_budget(stem):
    model = default_model(stem=stem)
    assert count_parameters(model) <= 80_000  # the paper's 0.08M
    assert count_macs(model, 256) <= 0.5e9
    assert model_size_kb(count_parameters(model))["int8"] < 100


def record_sizes(sizes: dict, name: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    sizes[name] = (inputs[0].shape[-1], output.shape[-1])  # (input width, output width)


def test_space_to_depth_is_the_default_and_no_feature_map_is_at_full_resolution():
    model = default_model()
    assert model.stem == "space_to_depth" and model.downsample_factor == 16
    sizes = {}
    for name, layer in model.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d)):
            layer.register_forward_hook(partial(record_sizes, sizes, name))
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    stem, head = "encoders.0.0.conv", "head"
    assert sizes.pop(stem) == (64, 32) and sizes.pop(head) == (32, 64)  # image in, residual out
    assert sizes and max(max(pair) for pair in sizes.values()) == 32  # everything else at 64 / 2 or below
    assert count_macs(model, 256) < 0.5 * count_macs(default_model(stem="full"), 256)


def test_space_to_depth_layers_equal_pixel_unshuffle_conv_and_pixel_shuffle_head():
    """The stem's 6x6 stride-2 conv is PixelUnshuffle(2) + a 3x3 conv; the head is a 1x1 conv + PixelShuffle(2)."""
    torch.manual_seed(0)
    model = default_model()
    stem, head = model.encoders[0][0].conv, model.head
    nn.init.normal_(head.weight)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    # the 3x3 kernel tap (ky, kx) on unshuffled channel c*4 + a*2 + b is image tap (2*ky + a, 2*kx + b) of colour c
    conv3 = nn.Conv2d(12, stem.out_channels, 3, padding=1)
    w6 = stem.weight.detach()  # (out, 3, 6, 6)
    w3 = w6.reshape(-1, 3, 3, 2, 3, 2).permute(0, 1, 3, 5, 2, 4).reshape(-1, 12, 3, 3)
    conv1 = nn.Conv2d(head.in_channels, 12, 1)
    features = torch.rand(2, head.in_channels, 16, 16)
    with torch.no_grad():
        conv3.weight.copy_(w3), conv3.bias.copy_(stem.bias)
        assert torch.allclose(stem(x), conv3(F.pixel_unshuffle(x, 2)), atol=1e-5)
        # transposed-conv weight (in, colour, a, b) -> 1x1 weight (colour*4 + a*2 + b, in); one bias per colour
        conv1.weight.copy_(head.weight.reshape(head.in_channels, 12).t()[..., None, None])
        conv1.bias.copy_(head.bias.repeat_interleave(4))
        assert torch.allclose(head(features), F.pixel_shuffle(conv1(features), 2), atol=1e-5)


def test_space_to_depth_residual_is_per_pixel():
    """PixelShuffle gives each of the 4 pixels of a 2x2 block its own value (not a 2x upsampled map)."""
    model = default_model()
    with torch.no_grad():
        nn.init.normal_(model.head.weight)
        residual = model.residual(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert (residual[..., 0::2, :] - residual[..., 1::2, :]).abs().mean() > 0.01
    assert (residual[..., :, 0::2] - residual[..., :, 1::2]).abs().mean() > 0.01


def test_checkpoint_without_the_new_keys_builds_the_previous_model():
    """load_tinybeauty calls TinyBeauty(**model_kwargs): old kwargs must give the old layout."""
    from models.tinybeauty import load_tinybeauty

    old = TinyBeauty(**OLD_KWARGS)
    assert old.stem == "full" and old.skip == "concat" and count_parameters(old) == 67_443
    state = {"arch": "tinybeauty", "model_kwargs": OLD_KWARGS, "model": old.state_dict()}
    loaded = load_tinybeauty(state)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), old.eval()(x))
    with pytest.raises(RuntimeError):  # the new default's weights do not fit the old layout
        TinyBeauty(**OLD_KWARGS).load_state_dict(default_model().state_dict())


def test_seed_layers_are_over_budget_so_the_budget_check_can_fail():
    seed_like = TinyBeauty(block="plain", upsample="transposed")
    assert count_parameters(seed_like) > 400_000


@pytest.mark.parametrize("stem, skip", [("space_to_depth", "concat"), ("space_to_depth", "add"), ("full", "add")])
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 32, 48)])
def test_shapes_and_range(shape, stem, skip):
    model = default_model(stem=stem, skip=skip)
    with torch.no_grad():
        nn.init.normal_(model.head.weight, std=1.0)  # a non-trivial residual
        x = torch.rand(shape) * 2 - 1
        residual, out = model.residual(x), model(x)
    assert residual.shape == out.shape == x.shape
    assert out.min() >= -1 and out.max() <= 1
    assert torch.allclose(out, (x + residual).clamp(-1, 1))
    assert residual.abs().max() > 0.01


@pytest.mark.parametrize("stem", STEMS)
def test_starts_as_the_identity(stem):
    model = default_model(stem=stem)
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


@pytest.mark.parametrize(
    "key, value",
    [("block", "fancy"), ("upsample", "pixelshuffle"), ("norm", "layer"), ("stem", "patchify"), ("skip", "mul")],
)
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


@pytest.mark.parametrize("stem", STEMS)
def test_onnx_export_matches_pytorch(stem, tmp_path):
    """The exported graph (opset 17, constants folded) gives PyTorch's output, and has no leftover ops."""
    import onnx

    from deploy.onnx_export import export_onnx, ort_session

    torch.manual_seed(0)
    model = default_model(stem=stem).eval()
    with torch.no_grad():
        nn.init.normal_(model.head.weight, std=0.1)
    path = export_onnx(model, tmp_path / "tinybeauty.onnx", size=64)
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version == 17
    # no Reshape/Transpose/DepthToSpace copies of the image; the only Muls are the intensity blend's two
    # (makeup x intensity + source x (1 - intensity)), none by residual_scale 1
    ops = [node.op_type for node in graph.graph.node]
    assert set(ops) <= {"Conv", "Relu", "MaxPool", "ConvTranspose", "Concat", "Add", "Clip", "Constant", "Mul", "Sub"}
    assert ops.count("Mul") == 2 and ops.count("Sub") == 1
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort_session(path, threads=1).run(None, {"source": x.numpy()})[0]
    assert got.shape == expected.shape
    assert abs(got - expected).max() < 1e-4
    assert abs(expected - x.numpy()).max() > 0.01  # a non-trivial residual was compared


def test_bottleneck_dilation_widens_the_receptive_field_with_the_same_weights():
    plain, dilated = default_model(bottleneck_dilation=1), default_model(bottleneck_dilation=2)
    assert count_parameters(plain) == count_parameters(dilated)
    dilated.load_state_dict(plain.state_dict())  # same weights, only the dilation differs

    def reach(model: TinyBeauty) -> int:
        """Width (columns) of the input region that the residual's centre pixel depends on."""
        nn.init.normal_(model.head.weight, std=1.0)
        x = torch.zeros(1, 3, 256, 256, requires_grad=True)
        model.residual(x)[0, :, 128, 128].sum().backward()
        return int((x.grad.abs().sum((0, 1)) > 0).any(0).sum())

    torch.manual_seed(0)
    assert reach(dilated) > reach(plain) + 16  # measured: 170 -> 202 pixels wide
    with pytest.raises(ValueError, match="model.bottleneck_dilation"):
        TinyBeauty(bottleneck_dilation=0)

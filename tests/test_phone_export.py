"""Phone models: the rewrite for phone converters is the same function; LiteRT and Core ML exports meet their bounds.

The conversions run in the phone environment (scripts/setup_mobile.sh, which scripts/test.sh runs); without it
they are skipped with the reason, except under CI (CI=true), where they fail.
"""

import json
import os

import numpy as np
import pytest
import torch

from deploy.makeup import blend
from deploy.mobile_env import MOBILE_ENV, mobile_python
from deploy.phone_model import UnitMakeup, phone_layers, phone_model
from errors import InputError
from models.tinybeauty import TinyBeauty
from tests.conftest import write_synthetic_pairs

FAST = ["data.size=32", "train.crop_size=0", "train.batch_size=4", "train.warmup_steps=2", "wandb.mode=disabled"]


def random_model(seed: int = 0, **kwargs) -> TinyBeauty:
    torch.manual_seed(seed)
    model = TinyBeauty(**kwargs)
    for p in model.parameters():  # the head starts at zero: give every layer weights, so each rewrite shows
        torch.nn.init.normal_(p, std=0.2)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stem": "space_to_depth", "norm": "batch", "bottleneck_dilation": 2},  # the style models' layout
        {"stem": "full", "skip": "add"},
        {"upsample": "transposed", "block": "plain", "widths": (8, 16), "bottleneck": 16},
        {"upsample": "bilinear"},
    ],
)
def test_phone_layers_are_the_same_function(kwargs):
    model = random_model(**kwargs)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected, got = model(x), phone_layers(model)(x)
    assert (expected - got).abs().max() < 1e-5
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) and m.groups > 1 for m in phone_layers(model).modules())


def test_phone_model_takes_pixels_over_255_channels_last_and_keeps_intensity():
    model = random_model(stem="space_to_depth")
    face = torch.rand(2, 3, 64, 64)  # [0, 1]
    phone = phone_model(model)
    with torch.no_grad():
        made = model(face * 2 - 1)
        at = {level: phone(face.permute(0, 2, 3, 1), torch.tensor([level])).permute(0, 3, 1, 2)
              for level in (0.0, 0.5, 1.0)}  # fmt: skip
        half = blend(face * 2 - 1, made, 0.5)
    assert torch.equal(at[0.0], face)  # intensity 0: the input exactly
    assert (at[1.0] * 2 - 1 - made).abs().max() < 1e-5  # 1: the model's output
    # 0.5: blend's value except where the raw residual saturates the clamp (the phone model scales the raw residual)
    assert ((at[0.5] * 2 - 1 - half).abs() < 1e-5).float().mean() > 0.5
    assert isinstance(phone, UnitMakeup)


def test_unknown_format_lists_the_valid_ones():
    from tinybeauty_export import parse_formats

    assert parse_formats("onnx, tflite,coreml,tflite") == ("onnx", "tflite", "coreml")
    with pytest.raises(InputError, match="unknown --format tfl; valid: onnx, tflite, coreml"):
        parse_formats("onnx,tfl")
    with pytest.raises(InputError, match="--onnx-int8"):
        parse_formats("qdq")


def test_a_missing_phone_environment_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setenv(MOBILE_ENV, str(tmp_path / "no_python"))
    with pytest.raises(InputError, match="setup_mobile.sh"):
        mobile_python()


def need_phone_environment():
    try:
        return mobile_python()
    except InputError as err:
        if os.environ.get("CI"):
            pytest.fail(f"phone export cannot run in CI: {err}")
        pytest.skip(f"phone export skipped: {err}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tinybeauty_training import main

    tmp = tmp_path_factory.mktemp("phone")
    root = write_synthetic_pairs(tmp / "pairs", n=12, size=32)
    main([f"data.root={root}", f"output_dir={tmp / 'run'}", "train.epochs=2", "train.lr=0.01", "model.norm=batch",
          *FAST])  # fmt: skip
    return tmp / "run" / "tinybeauty_final.pt"


@pytest.mark.slow
def test_tflite_and_coreml_exports_meet_their_bounds(trained, tmp_path):
    need_phone_environment()
    from tinybeauty_export import main

    out = tmp_path / "export"
    report = main(["--checkpoint", str(trained), "--output", str(out), "--format", "onnx,tflite,coreml",
                   "--calib", "8", "--faces", "4"])  # fmt: skip
    assert report["checks"] and all(report["checks"].values()), report["checks"]
    lite = report["phone"]["tflite"]
    assert lite["fp32"]["drop_db_vs_pytorch"] <= 0.1 and lite["fp32"]["max_abs_error"] < 1e-4
    assert lite["int8"]["drop_db_vs_pytorch"] <= 0.3
    assert lite["fp32"]["max_abs_error_at_0_vs_source"] == 0  # intensity 0: the input exactly
    assert lite["int8"]["uint8_levels_at_0_vs_source"]["max"] == 0  # int8 too, in pixel levels
    assert lite["int8"]["input_dtype"] == "int8"  # full-integer: the image goes in as int8
    for io in ("source_quantization", "makeup_quantization"):  # pixel - 128, one level a pixel value, both ways
        scale, zero = lite["int8"][io]
        assert abs(scale - 1 / 255) < 1e-9 and zero == -128, (io, scale, zero)
    assert (out / "tinybeauty_int8.tflite").stat().st_size < 100 * 1024
    coreml = report["phone"]["coreml"]
    assert coreml["ops_not_on_neural_engine"] == [] and "conv" in coreml["ops"]
    assert {i["name"] for i in coreml["inputs"]} == {"source", "intensity"}
    assert (out / "tinybeauty.mlpackage" / "Manifest.json").is_file()
    assert json.loads((out / "export_report.json").read_text())["phone"]["checks"] == report["phone"]["checks"]
    assert np.isfinite(lite["int8"]["psnr_vs_pytorch"])


def test_shipped_styles_carry_the_phone_files():
    from deploy.styles import list_styles

    styles, _ = list_styles()
    assert styles
    for style in styles:
        phone = style.phone_files()
        assert set(phone) == {"tflite", "coreml"}, style.name
        assert phone["tflite"].stat().st_size < 100 * 1024
        assert (phone["coreml"] / "Manifest.json").is_file()


@pytest.mark.slow
def test_a_shipped_int8_tflite_matches_its_onnx_on_a_real_face(tmp_path):
    """The shipped classic_red_lip .tflite (int8) against its fp32 ONNX (ONNX Runtime) on a bundled face."""
    import subprocess

    from common import REPO_ROOT, from_uint8
    from data.io import read_rgb, resize_rgb
    from deploy.onnx_export import ort_run, ort_session
    from deploy.styles import get_style

    python = need_phone_environment()
    style = get_style("classic_red_lip")
    face = from_uint8(np.array(resize_rgb(read_rgb(REPO_ROOT / "data/samples/faces/AF1.jpg"), 256)))[None].numpy()
    onnx_out = ort_run(ort_session(style.model("fp32")), face)
    np.save(tmp_path / "face.npy", face)
    script = ("import sys, numpy as np; from deploy.mobile_export import TFLiteRunner; "
              "run = TFLiteRunner(sys.argv[1]); face = np.load(sys.argv[2]); "
              "np.save(sys.argv[3], run(face, 1.0)); np.save(sys.argv[4], run(face, 0.0))")  # fmt: skip
    subprocess.run([str(python), "-c", script, str(style.phone_files()["tflite"]), str(tmp_path / "face.npy"),
                    str(tmp_path / "one.npy"), str(tmp_path / "zero.npy")], cwd=REPO_ROOT, check=True,
                   capture_output=True)  # fmt: skip
    one, zero = np.load(tmp_path / "one.npy"), np.load(tmp_path / "zero.npy")
    mse = float(((one - onnx_out) ** 2).mean())
    assert 10 * np.log10(4 / mse) > 45  # the int8 phone model is the same makeup (about 60 dB on held-out faces)
    made_up = np.abs(onnx_out - face).max(axis=1) > 4 / 127.5  # pixels the makeup moves by over 4 levels
    assert made_up.mean() > 0.005  # the lips, at least
    change = np.abs(onnx_out - face).max(axis=1)[made_up].mean()
    assert np.abs(one - face).max(axis=1)[made_up].mean() > 0.8 * change  # the makeup is there, not the face
    assert np.array_equal(np.rint((zero + 1) * 127.5), np.rint((face + 1) * 127.5))  # intensity 0: the face

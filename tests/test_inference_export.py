"""tinybeauty_inference.py on odd sizes and whole photos, tinybeauty_export.py parity with PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import write_synthetic_pairs

FAST = ["data.size=32", "train.crop_size=0", "train.batch_size=4", "train.warmup_steps=2", "wandb.mode=disabled"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A checkpoint after one epoch on synthetic pairs, with a visibly non-zero residual."""
    from tinybeauty_training import main

    tmp = tmp_path_factory.mktemp("tb")
    root = write_synthetic_pairs(tmp / "pairs", n=12, size=32)
    main([f"data.root={root}", f"output_dir={tmp / 'run'}", "train.epochs=1", "train.lr=0.01", *FAST])
    state = torch.load(tmp / "run" / "tinybeauty_final.pt", weights_only=True)
    assert state["model"]["head.weight"].abs().max() > 0
    return tmp / "run" / "tinybeauty_final.pt"


def test_inference_keeps_odd_sizes_and_adds_the_resized_residual(trained, tmp_path):
    from deploy.makeup import apply_makeup, load_model
    from tinybeauty_inference import main

    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    odd = rng.integers(0, 256, (45, 37, 3), dtype=np.uint8)
    Image.fromarray(odd).save(inputs / "odd.png")
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)).save(inputs / "gray.jpg")
    (inputs / "broken.png").write_bytes(b"nope")
    summary = main(["--checkpoint", str(trained), "--input", str(inputs), "--output", str(tmp_path / "out")])

    assert summary["written"] == 2 and summary["skipped"] == [str(inputs / "broken.png")]
    result = np.asarray(Image.open(tmp_path / "out" / "odd.png"))
    assert result.shape == odd.shape and np.asarray(Image.open(tmp_path / "out" / "gray.png")).shape == (50, 70, 3)

    model, size = load_model(trained, torch.device("cpu"))
    assert size == 32
    assert np.array_equal(result, apply_makeup(model, odd, size, torch.device("cpu")))
    # The residual is computed at 32x32 and upsampled, so the output differs from the input but keeps
    # the input's own pixels: far closer to it than a blurred 32x32 round trip would be.
    diff = np.abs(result.astype(int) - odd.astype(int))
    assert diff.max() > 0
    blurred = np.asarray(Image.fromarray(odd).resize((32, 32)).resize((37, 45)))
    assert diff.mean() < np.abs(blurred.astype(int) - odd.astype(int)).mean() / 2


def test_single_file_at_model_size_equals_the_forward_pass(trained, tmp_path):
    from common import from_uint8, to_uint8
    from deploy.makeup import load_model
    from tinybeauty_inference import main

    face = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(face).save(tmp_path / "face.png")
    main(["--checkpoint", str(trained), "--input", str(tmp_path / "face.png"), "--output", str(tmp_path / "o")])
    model, _ = load_model(trained, torch.device("cpu"))
    with torch.no_grad():
        expected = to_uint8(model(from_uint8(face)[None])[0])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "face.png")), expected)


class _SaturatedResidual(torch.nn.Module):
    """A model whose raw residual is +2 on white pixels and 0 elsewhere: after the clamp it is the identity.

    Training only sees `clamp(input + residual)`, so nothing stops a trained model from doing this."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * (x > 0.9).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.residual(x)).clamp(-1.0, 1.0)


def test_large_face_gets_the_clamped_change_not_the_raw_residual():
    """A white/grey face at 2x the model's size: the model changes nothing at its own resolution, so
    nothing may change at full size. Upsampling the raw +2 residual made a bright halo on the grey side."""
    from deploy.makeup import apply_makeup

    face = np.full((64, 64, 3), 128, np.uint8)
    face[:, :32] = 255  # white left half, mid-grey right half
    model = _SaturatedResidual()
    assert np.array_equal(apply_makeup(model, face, 32, torch.device("cpu")), face)
    for intensity in (0.5, 1.5):
        assert np.array_equal(apply_makeup(model, face, 32, torch.device("cpu"), intensity), face)

    # The old formula (face + upsampled raw residual) on the same face: grey pixels next to the edge overshoot.
    from common import from_uint8, to_uint8
    from data.io import resize_rgb

    raw = model.residual(from_uint8(resize_rgb(face, 32))[None])
    raw = torch.nn.functional.interpolate(raw, size=(64, 64), mode="bilinear", align_corners=False)
    old = to_uint8((from_uint8(face)[None] + raw).clamp(-1, 1)[0])
    assert old[:, 32:].max() > 128 + 50


@pytest.mark.parametrize("shape", [(32, 32, 3), (45, 37, 3)])
def test_intensity_zero_gives_the_face_back_and_one_the_default(trained, shape):
    from common import from_uint8, to_uint8
    from deploy.makeup import apply_makeup, load_model

    cpu = torch.device("cpu")
    model, size = load_model(trained, cpu)
    face = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    default = apply_makeup(model, face, size, cpu)
    assert np.array_equal(apply_makeup(model, face, size, cpu, intensity=0.0), face)
    assert np.array_equal(apply_makeup(model, face, size, cpu, intensity=1.0), default)
    if shape[:2] == (size, size):  # today's output: the forward pass
        with torch.no_grad():
            assert np.array_equal(default, to_uint8(model(from_uint8(face)[None])[0]))
    assert not np.array_equal(default, face)


@pytest.mark.parametrize("shape", [(32, 32, 3), (64, 48, 3)])
def test_intensity_scales_the_change(shape):
    """A TinyBeauty whose residual is a known colour shift (the head's bias), on faces far from 0 and 255."""
    from deploy.makeup import apply_makeup
    from models.tinybeauty import TinyBeauty

    model = TinyBeauty(stem="space_to_depth").eval()
    shift = torch.tensor([0.2, -0.1, 0.05])  # in [-1, 1] units: +25.5, -12.75, +6.4 grey levels
    with torch.no_grad():
        model.head.bias.copy_(shift)
    face = np.random.default_rng(5).integers(60, 190, shape, dtype=np.uint8)
    for intensity in (0.5, 1.0, 1.5):
        change = apply_makeup(model, face, 32, torch.device("cpu"), intensity).astype(float) - face
        expected = (shift * intensity * 127.5).numpy()
        assert np.abs(change - expected).max() <= 0.5 + 1e-3, intensity  # only the rounding to uint8


@pytest.mark.parametrize("value", ["-0.1", "1.6", "nan"])
def test_intensity_out_of_range_is_a_clear_error(trained, tmp_path, value, capsys):
    from tinybeauty_inference import main

    with pytest.raises(SystemExit) as err:
        main(["--checkpoint", str(trained), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
              "--intensity", value])  # fmt: skip
    assert err.value.code == 2
    assert "--intensity must be between 0 and 1.5" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_intensity_reaches_the_written_files(trained, tmp_path):
    from tinybeauty_inference import main

    face = np.random.default_rng(3).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    Image.fromarray(face).save(tmp_path / "face.png")
    summary = main(["--checkpoint", str(trained), "--input", str(tmp_path / "face.png"), "--output",
                    str(tmp_path / "o"), "--intensity", "0"])  # fmt: skip
    assert summary["intensity"] == 0.0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "face.png")), face)


def test_full_photo_goes_through_face_align(trained, tmp_path, monkeypatch):
    """Our side of the contract with data.face_align.process_full_photo (a stand-in module here)."""
    from tinybeauty_inference import main

    calls = []

    def process_full_photo(photo, apply_fn, aligner=None):
        if photo[0, 0, 0] == 0:  # the "no face" photo
            return photo.copy(), 0
        face = apply_fn(np.ascontiguousarray(photo[:64, :64]))
        calls.append(face.shape)
        out = photo.copy()
        out[:64, :64] = face
        return out, 1

    class FakeAligner:
        closed = False

        def close(self):
            FakeAligner.closed = True

    import tinybeauty_inference

    monkeypatch.setattr(tinybeauty_inference, "process_full_photo", process_full_photo)
    monkeypatch.setattr(tinybeauty_inference, "FaceAligner", FakeAligner)
    photos = tmp_path / "photos"
    photos.mkdir()
    with_face = np.full((80, 120, 3), 128, np.uint8)
    no_face = np.zeros((60, 60, 3), np.uint8)
    Image.fromarray(with_face).save(photos / "a.png")
    Image.fromarray(no_face).save(photos / "b.png")
    summary = main(
        ["--checkpoint", str(trained), "--input", str(photos), "--output", str(tmp_path / "o"), "--full-photo"]
    )

    assert calls == [(64, 64, 3)] and FakeAligner.closed
    assert summary["faces"] == 1 and summary["photos_without_face"] == [str(photos / "b.png")]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "b.png")), no_face)
    assert np.asarray(Image.open(tmp_path / "o" / "a.png")).shape == with_face.shape


def test_export_matches_pytorch(trained, tmp_path):
    from tinybeauty_export import main

    report = main(["--checkpoint", str(trained), "--output", str(tmp_path / "onnx"), "--calib", "8"])
    for name in ("tinybeauty_fp32.onnx", "tinybeauty_int8.onnx", "export_report.json"):
        assert (tmp_path / "onnx" / name).is_file(), name
    assert json.loads((tmp_path / "onnx" / "export_report.json").read_text())["checks"] == report["checks"]
    assert report["fp32"]["max_abs_error"] < 1e-4
    assert report["int8"]["size_kb"] < 100 < report["fp32"]["size_kb"]
    assert report["int8"]["psnr_vs_pytorch"] > 30
    assert abs(report["int8"]["drop_db_vs_pytorch"]) < 1.0

    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "onnx" / "tinybeauty_fp32.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("source", "makeup") and inp.shape[1:] == [3, 32, 32]
    batch = np.random.default_rng(0).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)  # dynamic batch
    assert session.run(None, {"source": batch})[0].shape == (3, 3, 32, 32)


@pytest.mark.parametrize("int8_format", ["qoperator", "qdq"])
def test_onnx_intensity_is_an_optional_input(trained, tmp_path, int8_format):
    """fp32 and int8: feeding `source` alone works (intensity 1); 0 gives the faces back exactly; 1 gives
    today's output; other values blend as tinybeauty_inference's PyTorch `blend`."""
    import onnx
    import onnxruntime as ort

    from deploy.makeup import blend, load_model
    from tinybeauty_export import main

    # One epoch leaves a residual of ~0.005; a colour shift on top makes 0, 0.5, 1 and 1.5 far apart.
    state = torch.load(trained, weights_only=True)
    state["model"]["head.bias"] += torch.tensor([0.2, -0.1, 0.05])
    checkpoint = tmp_path / "shifted.pt"
    torch.save(state, checkpoint)
    report = main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "onnx"), "--calib", "8", "--strict",
                   "--onnx-int8", int8_format])  # fmt: skip
    assert all(report["checks"].values()), report["checks"]
    assert report["int8"]["size_kb"] < 100 and report["intensity"]["default"] == 1.0

    model, _ = load_model(checkpoint, torch.device("cpu"))
    faces = np.random.default_rng(4).uniform(-0.8, 0.8, (2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        today = model(torch.from_numpy(faces)).numpy()
    for name in ("tinybeauty_fp32.onnx", "tinybeauty_int8.onnx"):
        path = tmp_path / "onnx" / name
        graph = onnx.load(str(path)).graph
        assert [v.name for v in graph.input] == ["source", "intensity"]
        (default,) = [t for t in graph.initializer if t.name == "intensity"]
        assert onnx.numpy_helper.to_array(default).shape == () and onnx.numpy_helper.to_array(default) == 1

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [v.name for v in session.get_overridable_initializers()] == ["intensity"]

        def run(intensity=None, session=session):
            extra = {} if intensity is None else {"intensity": np.array(intensity, np.float32)}
            return session.run(None, {"source": faces, **extra})[0]

        alone = run()
        assert np.array_equal(run(0.0), faces)
        assert np.array_equal(run(1.0), alone)
        assert np.abs(alone - today).max() < (1e-4 if "fp32" in name else 0.1)  # int8 activations
        for intensity in (0.5, 1.5):  # the blend stays float in the int8 model too
            expected = blend(torch.from_numpy(faces), torch.from_numpy(alone), intensity).numpy()
            assert np.abs(run(intensity) - expected).max() < 1e-5, (name, intensity)
            assert np.abs(run(intensity) - alone).max() > 0.05  # the input is live, not folded into a constant


def test_export_leaves_a_batchnorm_model_in_eval_mode(tmp_path):
    """The exporter restores the mode of the module it is handed; the intensity wrapper must not hand back a model
    in training mode, or the check that follows compares ONNX with BatchNorm on batch statistics."""
    from deploy.onnx_export import export_onnx
    from models.tinybeauty import TinyBeauty

    model = TinyBeauty(norm="batch").eval()
    export_onnx(model, tmp_path / "m.onnx", 32)
    assert not any(module.training for module in model.modules())

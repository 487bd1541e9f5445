"""tinybeauty_inference.py on odd sizes and whole photos, tinybeauty_export.py parity with PyTorch."""

from __future__ import annotations

import json
import sys
import types
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
    state = torch.load(tmp / "run" / "tinybeauty_final.pt", weights_only=False)
    assert state["model"]["head.weight"].abs().max() > 0
    return tmp / "run" / "tinybeauty_final.pt"


def test_inference_keeps_odd_sizes_and_adds_the_resized_residual(trained, tmp_path):
    from tinybeauty_inference import apply_makeup, load_model, main

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
    from tinybeauty_inference import load_model, main

    face = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(face).save(tmp_path / "face.png")
    main(["--checkpoint", str(trained), "--input", str(tmp_path / "face.png"), "--output", str(tmp_path / "o")])
    model, _ = load_model(trained, torch.device("cpu"))
    with torch.no_grad():
        expected = to_uint8(model(from_uint8(face)[None])[0])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "face.png")), expected)


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

    fake = types.SimpleNamespace(process_full_photo=process_full_photo, FaceAligner=FakeAligner)
    monkeypatch.setitem(sys.modules, "data.face_align", fake)
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

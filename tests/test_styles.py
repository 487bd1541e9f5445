"""Shipped styles (deploy/styles.py): the registry, --list-styles and --style in tinybeauty_inference.py and
tinybeauty_video.py, and the page's export without the intensity blend (deploy.onnx_export.without_intensity)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deploy.styles import REQUIRED, STYLES_ENV, StyleError, describe_styles, get_style, list_styles, styles_root
from tests.conftest import SAMPLE_FACES


def fake_style(root: Path, name: str, title: str = "", skip: str | None = None) -> Path:
    """A style folder with placeholder files (the registry reads no model), lacking `skip`."""
    folder = root / name
    folder.mkdir(parents=True)
    for file in REQUIRED:
        if file != skip:
            (folder / file).write_bytes(b"x" * 2048)
    if skip != "style.json":
        (folder / "style.json").write_text(json.dumps({"title": title or name.title(), "description": "a look"}))
    return folder


def test_registry_lists_finds_and_explains(tmp_path):
    fake_style(tmp_path, "smoky", "Smoky eye")
    fake_style(tmp_path, "red", "Red lip")
    fake_style(tmp_path, "half", skip="tinybeauty_int8.onnx")
    (tmp_path / ".hidden").mkdir()
    styles, broken = list_styles(tmp_path)
    assert [s.name for s in styles] == ["red", "smoky"] and styles[1].title == "Smoky eye"
    assert set(broken) == {"half"} and "tinybeauty_int8.onnx" in broken["half"]
    assert get_style("smoky", tmp_path).model() == tmp_path / "smoky" / "tinybeauty_fp32.onnx"  # fp32 by default
    assert get_style("smoky", tmp_path).model("int8").name == "tinybeauty_int8.onnx"
    assert get_style(str(tmp_path / "red")).title == "Red lip"  # a path works too

    with pytest.raises(StyleError, match=r"unknown style 'blue'.* are red, smoky; 1 folder"):
        get_style("blue", tmp_path)
    with pytest.raises(StyleError) as missing:
        get_style("half", tmp_path)
    assert str(tmp_path / "half") in str(missing.value) and "lacks tinybeauty_int8.onnx" in str(missing.value)
    with pytest.raises(StyleError, match="precision"):
        styles[0].model("fp16")

    text = describe_styles(tmp_path)
    assert "smoky" in text and "Smoky eye: a look" in text and "fp32 2 KB" in text and "half" in text


def test_bad_style_json_names_the_file_and_key(tmp_path):
    folder = fake_style(tmp_path, "odd")
    (folder / "style.json").write_text(json.dumps({"title": 3}))
    with pytest.raises(StyleError, match=r"odd/style.json: key 'title' must be a string"):
        get_style("odd", tmp_path)
    (folder / "style.json").write_text("{not json")
    with pytest.raises(StyleError, match=r"odd/style.json: not readable JSON"):
        get_style("odd", tmp_path)


def test_no_styles_yet_says_so(tmp_path):
    with pytest.raises(StyleError, match="no styles in .* yet"):
        get_style("smoky", tmp_path / "empty")
    assert "no styles in" in describe_styles(tmp_path / "empty")


def test_the_root_is_the_repository_folder_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(STYLES_ENV, raising=False)
    assert styles_root() == Path(__file__).resolve().parents[1] / "weights" / "styles"
    monkeypatch.setenv(STYLES_ENV, str(tmp_path))
    assert styles_root() == tmp_path and styles_root(tmp_path / "x") == tmp_path / "x"


@pytest.mark.parametrize("script", ["tinybeauty_inference", "tinybeauty_video"])
def test_list_styles_and_unknown_style_on_the_command_line(script, tmp_path, monkeypatch, capsys):
    import importlib

    from common import run_cli

    monkeypatch.setenv(STYLES_ENV, str(tmp_path))
    fake_style(tmp_path, "smoky", "Smoky eye")
    fake_style(tmp_path, "broken", skip="README.md")
    main = importlib.import_module(script).main
    main(["--list-styles"])
    out = capsys.readouterr().out
    assert "smoky" in out and "Smoky eye" in out and "broken" in out and "lacks README.md" in out

    code = run_cli(main, ["--style", "nope", "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown style 'nope'" in err and "smoky" in err
    code = run_cli(main, ["--style", "broken", "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    assert code == 2 and f"{tmp_path / 'broken'} lacks README.md" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # neither a model nor a style
        main(["--input", str(tmp_path), "--output", str(tmp_path / "o")])


# -------------------------------------------------------------------------------------------------
# With a real (stand-in) style: an untrained TinyBeauty exported as make_style.py exports one


@pytest.fixture(scope="module")
def style_root(tmp_path_factory) -> Path:
    from web.page_driver import stand_in_style

    root = tmp_path_factory.mktemp("styles")
    stand_in_style(root, "warm")
    return root


@pytest.mark.slow
def test_inference_with_a_style_runs_its_fp32_export(style_root, tmp_path, monkeypatch):
    """A 256x256 face (the model's size) through --style gives ONNX Runtime's output on it, rounded; --precision
    int8 runs the other file."""
    from common import from_uint8, to_uint8
    from deploy.onnx_export import ort_run, ort_session
    from tinybeauty_inference import main

    monkeypatch.setenv(STYLES_ENV, str(style_root))
    face = np.asarray(Image.open(SAMPLE_FACES / "AM2.jpg").convert("RGB").resize((256, 256)))
    Image.fromarray(face).save(tmp_path / "face.png")
    summary = main(["--style", "warm", "--input", str(tmp_path / "face.png"), "--output", str(tmp_path / "out")])
    assert summary["style"] == "warm" and summary["model"] == str(style_root / "warm" / "tinybeauty_fp32.onnx")
    import torch

    expected = to_uint8(
        torch.from_numpy(
            ort_run(ort_session(style_root / "warm" / "tinybeauty_fp32.onnx"), from_uint8(face)[None].numpy())
        )[0]
    )
    written = np.asarray(Image.open(tmp_path / "out" / "face.png"))
    assert np.array_equal(written, expected) and np.abs(written.astype(int) - face).mean() > 3

    summary = main(["--style", "warm", "--precision", "int8", "--input", str(tmp_path / "face.png"),
                    "--output", str(tmp_path / "int8"), "--intensity", "0"])  # fmt: skip
    assert summary["model"].endswith("tinybeauty_int8.onnx")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "int8" / "face.png")), face)  # intensity 0: the face


def read_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video, BGR, as int."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame.astype(int))
    capture.release()
    return frames


@pytest.mark.slow
def test_video_with_a_style(style_root, tmp_path, monkeypatch):
    """Six frames of a face, then three of grey: the face frames come out made up about as the style's photo mode
    makes up the same frame (--full-photo), the grey ones unchanged."""
    import cv2

    from tinybeauty_inference import main as photo_main
    from tinybeauty_video import main

    monkeypatch.setenv(STYLES_ENV, str(style_root))
    frame = np.full((240, 320, 3), 120, np.uint8)
    face = cv2.cvtColor(
        np.asarray(Image.open(SAMPLE_FACES / "CF3.jpg").convert("RGB").resize((200, 200))), cv2.COLOR_RGB2BGR
    )
    frame[20:220, 60:260] = face
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for _ in range(6):
        writer.write(frame)
    for _ in range(3):
        writer.write(np.full_like(frame, 120))
    writer.release()
    summary = main(["--style", "warm", "--input", str(tmp_path / "clip.avi"), "--output", str(tmp_path / "out.avi")])
    assert summary["model"] == str(style_root / "warm" / "tinybeauty_fp32.onnx")
    assert summary["frames"] == 9 and 5 <= summary["frames_with_face"] <= 6

    before, after = read_frames(tmp_path / "clip.avi"), read_frames(tmp_path / "out.avi")
    assert len(before) == len(after) == 9
    (tmp_path / "photo").mkdir()
    cv2.imwrite(str(tmp_path / "photo" / "frame.png"), before[0].astype(np.uint8))
    photo_main(["--style", "warm", "--input", str(tmp_path / "photo"), "--output", str(tmp_path / "photo_out"),
                "--full-photo"])  # fmt: skip
    photo = cv2.imread(str(tmp_path / "photo_out" / "frame.png")).astype(int)
    box = (slice(20, 220), slice(60, 260))  # the face
    photo_change = np.abs(photo - before[0])[box].mean()
    assert photo_change > 3, photo_change  # the stand-in style visibly changes this face (measured 8.9)
    for index in range(1, 6):  # the first frame may go by while the tracker starts
        change = np.abs(after[index] - before[index])[box].mean()
        from_photo = np.abs(after[index] - photo)[box].mean()
        # measured: change 8.7, 1.5 from the photo's; frames written through: change ~0, 8.9 from the photo's
        assert change > 0.6 * photo_change and from_photo < 0.35 * photo_change, (index, change, from_photo)
    for index in range(6, 9):  # no face: written as they came
        assert np.abs(after[index] - before[index]).max() <= 2, index


@pytest.mark.slow
def test_the_pages_export_is_the_full_one_at_intensity_one(style_root):
    """web/serve.py serves each export without its intensity blend: the same output at intensity 1, bit for bit,
    with no `intensity` input left."""
    import onnx
    import onnxruntime as ort

    from deploy.onnx_export import without_intensity

    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 256, 256)).astype(np.float32)
    for precision in ("fp32", "int8"):
        path = style_root / "warm" / f"tinybeauty_{precision}.onnx"
        trimmed = without_intensity(onnx.load(str(path)))
        assert [i.name for i in trimmed.graph.input] == ["source"] and len(trimmed.graph.node) < len(
            onnx.load(str(path)).graph.node
        )
        full = ort.InferenceSession(str(path)).run(None, {"source": x})[0]
        page = ort.InferenceSession(trimmed.SerializeToString()).run(None, {"source": x})[0]
        assert np.array_equal(full, page), precision
        assert without_intensity(trimmed) == trimmed  # nothing left to take out

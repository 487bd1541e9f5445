"""Phone photos and malformed files: each is made up correctly or skipped with one line naming it.

- Phone photos: JPEGs whose pixels are stored turned, with the EXIF orientation tag (1-8) saying how to turn
  them back, come out of tinybeauty_inference.py --full-photo upright (as the upright original does).
- A corpus of malformed inputs made here (truncated JPEG and PNG, a 1x1 image, a 16-bit PNG, a CMYK JPEG, an
  animated GIF, a 12,000 px photo, a text file named .jpg) goes through inference (photo and --full-photo),
  --style and the amplifier's face preparation (data.face_crops.prepare_face, what dda_amplify.py runs).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, SAMPLE_FACES, write_synthetic_pairs

# The test's own Image.open of the 108 MP photo (data.io reads it without the warning).
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

FACE = SAMPLE_FACES / "CF3.jpg"
BIG = (12_000, 9_000)  # width, height: a 108 MP phone photo (324 MB as RGB)
# What one read of a 108 MP JPEG holds at its peak: Pillow's decoded image (4 bytes a pixel, 432 MB) and the
# array (324 MB), plus the photo's copy with makeup: the whole --full-photo run measured 1.4 GB (4.5 GB before
# data.face_align.paste_back worked in bands).
MAX_RSS_GB = 2.5

# The stored pixels for each EXIF orientation: the inverse of the turn Pillow's exif_transpose applies.
STORE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # orientation 6 means "turn 90 degrees clockwise to view"
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def phone_photo() -> Image.Image:
    """A portrait photo (not square, so a sideways result has the wrong shape) with one face, upright."""
    canvas = Image.new("RGB", (480, 640), (200, 205, 210))
    face = Image.open(FACE).convert("RGB")
    canvas.paste(face, (65, 120))
    return canvas


def save_with_orientation(upright: Image.Image, orientation: int, path: Path) -> Path:
    stored = upright if STORE[orientation] is None else upright.transpose(STORE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, quality=95, exif=exif.tobytes())
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A TinyBeauty after one epoch on synthetic 32 px pairs (a visible, non-zero change)."""
    from tinybeauty_training import main

    tmp = tmp_path_factory.mktemp("tb")
    root = write_synthetic_pairs(tmp / "pairs", n=8, size=32)
    main([f"data.root={root}", f"output_dir={tmp / 'run'}", "train.epochs=1", "train.lr=0.01", "data.size=32",
          "train.crop_size=0", "train.batch_size=4", "train.warmup_steps=2", "wandb.mode=disabled"])  # fmt: skip
    return tmp / "run" / "tinybeauty_final.pt"


def test_read_rgb_turns_each_orientation_upright(tmp_path):
    from data.io import read_rgb

    upright = phone_photo()
    reference = read_rgb(save_with_orientation(upright, 1, tmp_path / "o1.jpg")).astype(int)
    for orientation in range(2, 9):
        path = save_with_orientation(upright, orientation, tmp_path / f"o{orientation}.jpg")
        assert Image.open(path).size != upright.size or orientation in (2, 3, 4)  # the pixels are stored turned
        image = read_rgb(path)
        assert image.shape == reference.shape, f"orientation {orientation}: {image.shape}"
        assert np.abs(image.astype(int) - reference).mean() < 2, f"orientation {orientation} not upright"


@pytest.mark.slow
def test_full_photo_output_is_upright_for_every_orientation(checkpoint, tmp_path):
    from tinybeauty_inference import main

    photos = tmp_path / "photos"
    photos.mkdir()
    upright = phone_photo()
    for orientation in STORE:
        save_with_orientation(upright, orientation, photos / f"orientation_{orientation}.jpg")
    summary = main(["--checkpoint", str(checkpoint), "--input", str(photos), "--output", str(tmp_path / "out"),
                    "--full-photo"])  # fmt: skip
    assert summary["written"] == 8 and summary["faces"] == 8 and not summary["photos_without_face"]

    reference = np.asarray(Image.open(tmp_path / "out" / "orientation_1.png")).astype(int)
    original = np.asarray(upright).astype(int)
    assert np.abs(reference - original).mean() > 0.5  # the model did change the face
    for orientation in range(2, 9):
        written = Image.open(tmp_path / "out" / f"orientation_{orientation}.png")
        assert "exif" not in written.info and written.getexif().get(0x0112) is None  # no stale tag
        result = np.asarray(written).astype(int)
        assert result.shape == reference.shape, f"orientation {orientation} came out {result.shape[1::-1]}"
        # Upright: as close to the upright photo's result as JPEG noise allows, and far from a sideways one.
        diff = np.abs(result - reference).mean()
        assert diff < 2, f"orientation {orientation}: {diff:.2f} grey levels from the upright result"


# -------------------------------------------------------------------------------------------------
# The malformed corpus


def png_16bit_rgb(rgb: np.ndarray, path: Path) -> Path:
    """A 48-bit (16 bits a channel) RGB PNG, written by hand: Pillow cannot write one."""
    height, width, _ = rgb.shape
    wide = rgb.astype(">u2") * 257
    raw = b"".join(b"\x00" + wide[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def big_photo(path: Path) -> Path:
    """A 12,000 x 9,000 JPEG with one large face."""
    face = Image.open(FACE).convert("RGB").resize((6000, 6000), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", BIG, (120, 130, 140))
    canvas.paste(face, (3000, 1500))
    canvas.save(path, quality=85)
    return path


def make_corpus(folder: Path) -> dict[str, str]:
    """The malformed files, plus two good ones; {file name: what should happen: made | skipped}."""
    folder.mkdir(parents=True, exist_ok=True)
    face = Image.open(FACE).convert("RGB")
    buffer = io.BytesIO()
    face.save(buffer, "JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    buffer = io.BytesIO()
    face.save(buffer, "PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.new("RGB", (1, 1), (190, 140, 120)).save(folder / "one_pixel.png")
    png_16bit_rgb(np.asarray(face), folder / "sixteen_bit.png")
    face.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    face.save(folder / "animated.gif", save_all=True, append_images=[face.rotate(10)], duration=100, loop=0)
    big_photo(folder / "huge.jpg")
    (folder / "notes.jpg").write_text("not an image, only named like one\n")
    face.save(folder / "good.jpg", quality=95)
    face.save(folder / "good_too.png")
    made = ("one_pixel.png", "sixteen_bit.png", "cmyk.jpg", "animated.gif", "huge.jpg", "good.jpg", "good_too.png")
    return {p.name: "made" if p.name in made else "skipped" for p in folder.iterdir()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("corpus") / "photos"
    return folder, make_corpus(folder)


@pytest.fixture(scope="module")
def style_root(tmp_path_factory) -> Path:
    from web.page_driver import stand_in_style

    root = tmp_path_factory.mktemp("styles")
    stand_in_style(root, "stand_in")
    return root


# Where each photo's face is, (rows, columns) sampled every `step` pixels: the whole image for the face itself in
# another encoding, the pasted face of huge.jpg (big_photo) one pixel in 8. one_pixel.png has none.
FACE_BOXES = {"huge.jpg": (slice(1500, 7500, 8), slice(3000, 9000, 8))}
MIN_FACE_CHANGE = 1.0  # grey levels, mean over the face: measured 2.05-2.09 (checkpoint), 8.65-8.77 (stand-in style)


def face_change(source: Path, written: Path) -> float:
    """Mean |written - source| over the source's face (FACE_BOXES), both read upright as 8-bit RGB."""
    from data.io import read_rgb

    box = FACE_BOXES.get(source.name, (slice(None), slice(None)))
    before = read_rgb(source)[box].astype(int)
    return float(np.abs(read_rgb(written)[box].astype(int) - before).mean())


def check_outcomes(folder: Path, out: Path, expected: dict[str, str], summary: dict, log_text: str, full: bool):
    """Every 'made' file written at its own (upright) size, made up where it has a face; with --full-photo the
    photo without a face written unchanged; every 'skipped' one named on one log line."""
    for name, outcome in expected.items():
        written = out / f"{Path(name).stem}.png"
        if outcome == "made":
            assert written.is_file(), f"{name}: not written ({summary})"
            with Image.open(folder / name) as source, Image.open(written) as result:
                assert result.size == source.size and result.mode == "RGB", name
            if name != "one_pixel.png":
                change = face_change(folder / name, written)
                assert change > MIN_FACE_CHANGE, f"{name}: the face changed by {change:.2f} grey levels on average"
            elif full:  # no face to make up: the photo as it came
                assert np.array_equal(np.asarray(Image.open(written)), np.asarray(Image.open(folder / name))), name
        else:
            assert not written.exists() and str(folder / name) in summary["skipped"], name
            lines = [line for line in log_text.splitlines() if name in line]
            assert len(lines) == 1 and "skipped" in lines[0], f"{name}: {lines}"
    assert summary["written"] == sum(v == "made" for v in expected.values())
    good = np.asarray(Image.open(out / "good_too.png")).astype(int)
    for name in ("sixteen_bit.png", "cmyk.jpg"):  # the same face in another encoding: the same makeup
        other = np.asarray(Image.open(out / f"{Path(name).stem}.png")).astype(int)
        assert np.abs(other - good).mean() < 3, name
    if full:
        assert set(summary["photos_without_face"]) == {str(folder / "one_pixel.png")}


def run_inference(args: list[str], capsys) -> tuple[dict, str]:
    """The script's main() in this process; (summary, what it logged)."""
    from tinybeauty_inference import main

    capsys.readouterr()
    summary = main(args)
    captured = capsys.readouterr()
    return summary, captured.out + captured.err


@pytest.mark.slow
@pytest.mark.parametrize("full", [False, True], ids=["photo", "full-photo"])
def test_corpus_through_inference_with_a_checkpoint(corpus, checkpoint, tmp_path, capsys, full):
    folder, expected = corpus
    args = ["--checkpoint", str(checkpoint), "--input", str(folder), "--output", str(tmp_path / "out")]
    summary, log_text = run_inference(args + ["--full-photo"] * full, capsys)
    check_outcomes(folder, tmp_path / "out", expected, summary, log_text, full)


@pytest.mark.slow
@pytest.mark.parametrize("full", [False, True], ids=["photo", "full-photo"])
def test_corpus_through_inference_with_a_style(corpus, style_root, tmp_path, capsys, monkeypatch, full):
    monkeypatch.setenv("TINYBEAUTY_STYLES", str(style_root))
    folder, expected = corpus
    args = ["--style", "stand_in", "--input", str(folder), "--output", str(tmp_path / "out")]
    summary, log_text = run_inference(args + ["--full-photo"] * full, capsys)
    assert summary["style"] == "stand_in" and summary["model"].endswith("tinybeauty_fp32.onnx")
    check_outcomes(folder, tmp_path / "out", expected, summary, log_text, full)


@pytest.mark.slow
def test_corpus_through_the_amplifiers_face_preparation(corpus):
    """dda_amplify.py prepares each input with data.face_crops.prepare_face: a pair's source and mask, or
    SkipInput with a reason code and a message naming the file."""
    from omegaconf import OmegaConf

    from data.face_crops import SkipInput, build_face_tools, prepare_face

    folder, expected = corpus
    cfg = OmegaConf.create({"face": {"margin": 0.4, "max_faces": 8, "parse_size": 256}})
    aligner, parser = build_face_tools(cfg, 128)
    outcomes = {}
    with aligner, parser:
        for path in sorted(folder.iterdir()):
            try:
                face = prepare_face(path, aligner, parser, 128)
                assert face.source.shape == (128, 128, 3) and face.mask.shape == (128, 128) and (face.mask == 2).any()
                outcomes[path.name] = "made"
            except SkipInput as skip:
                assert str(path) in skip.detail and "\n" not in skip.detail, skip.detail
                outcomes[path.name] = skip.reason
    assert {n: o for n, o in outcomes.items() if expected[n] == "made"} == {
        n: "made" if n != "one_pixel.png" else "no_face" for n, o in expected.items() if o == "made"
    }
    assert {outcomes[n] for n, o in expected.items() if o == "skipped"} <= {"corrupt", "not_an_image"}
    assert outcomes["notes.jpg"] == "not_an_image" and outcomes["truncated.jpg"] == "corrupt"


@pytest.mark.slow
def test_a_12000_px_photo_keeps_memory_and_time_sane(checkpoint, tmp_path):
    """--full-photo on a 108 MP photo in its own process: peak memory a small multiple of the photo."""
    photos = tmp_path / "photos"
    photos.mkdir()
    big_photo(photos / "huge.jpg")
    code = (
        "import json, resource, sys, time\n"
        "from tinybeauty_inference import main\n"
        "start = time.perf_counter()\n"
        "summary = main(sys.argv[1:])\n"
        "print(json.dumps({'faces': summary['faces'], 'seconds': time.perf_counter() - start,\n"
        "                  'max_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))\n"
    )
    args = ["--checkpoint", str(checkpoint), "--input", str(photos), "--output", str(tmp_path / "out"), "--full-photo"]
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"12,000 x 9,000 photo, --full-photo: {measured}")
    assert measured["faces"] == 1
    assert measured["max_rss_gb"] < MAX_RSS_GB, measured
    with Image.open(tmp_path / "out" / "huge.png") as written:
        assert written.size == BIG


def test_banded_change_matches_the_full_size_interpolation():
    """deploy.makeup.add_change (bands, numpy) gives what F.interpolate on the whole photo gave, which it replaces."""
    import torch
    import torch.nn.functional as F

    from common import from_uint8, to_uint8
    from deploy.makeup import add_change

    rng = np.random.default_rng(0)
    for height, width, size in [(45, 37, 32), (1, 1, 256), (700, 333, 256), (300, 900, 64)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        change = torch.from_numpy(rng.normal(0, 0.2, (3, size, size)).astype(np.float32))
        for intensity in (0.5, 1.0):
            resized = F.interpolate(change[None], size=(height, width), mode="bilinear", align_corners=False)
            full = to_uint8((from_uint8(image)[None] + intensity * resized).clamp(-1, 1)[0]).astype(int)
            banded = add_change(image, change, intensity, band_pixels=5000)  # many bands
            diff = np.abs(banded - full)
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-4, (height, width, size, intensity)


@pytest.mark.slow
def test_import_and_the_amplifier_see_phone_photos_upright(tmp_path):
    """make_seed_pairs.py --import and the amplifier's face preparation (dda_amplify.py) on pairs stored turned
    with an EXIF tag give what they give on the upright photos."""
    from omegaconf import OmegaConf

    from data.face_crops import build_face_tools, prepare_face
    from data.io import read_rgb
    from make_seed_pairs import main as make_seed_pairs

    upright = phone_photo()
    made_up = Image.fromarray(np.clip(np.asarray(upright).astype(int) + [30, -10, -10], 0, 255).astype(np.uint8))
    for name, orientation in (("upright", 1), ("phone", 6)):
        for side, picture in (("before", upright), ("after", made_up)):
            (tmp_path / name / side).mkdir(parents=True)
            save_with_orientation(picture, orientation, tmp_path / name / side / "me.jpg")
        summary = make_seed_pairs(["--import", str(tmp_path / name / "before"), str(tmp_path / name / "after"),
                                   "--output", str(tmp_path / name / "pairs"), "--size", "256"])  # fmt: skip
        assert summary["pairs_total"] == 1, summary
    for folder in ("source", "target"):
        phone, reference = (
            read_rgb(tmp_path / n / "pairs" / folder / "me.png").astype(int) for n in ("phone", "upright")
        )
        assert np.abs(phone - reference).mean() < 2, folder

    cfg = OmegaConf.create({"face": {"margin": 0.4, "max_faces": 8, "parse_size": 256}})
    aligner, parser = build_face_tools(cfg, 128)
    with aligner, parser:
        phone, reference = (
            prepare_face(tmp_path / n / "before" / "me.jpg", aligner, parser, 128) for n in ("phone", "upright")
        )
    assert np.abs(phone.source.astype(int) - reference.source).mean() < 2
    # the same face in the same upright photo: the same turn and scale (a sideways read would be 90 degrees off),
    # the same place within a pixel of the crop (JPEG's noise moves the detector a little)
    phone_matrix, reference_matrix = np.array(phone.matrix), np.array(reference.matrix)
    assert np.allclose(phone_matrix[:, :2], reference_matrix[:, :2], atol=0.005)
    assert np.allclose(phone_matrix[:, 2], reference_matrix[:, 2], atol=1.0)

"""Makeup per region (`--intensity lips=1.2,eyes=0.6,skin=0`): the parse of the value, the feathered weights, and
a real sample face through tinybeauty_inference.py (checkpoint, style, full photo) and tinybeauty_video.py."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from data.io import read_rgb
from deploy.regions import RegionIntensity, RegionParser, parse_intensity, region_weights
from tests.conftest import SAMPLE_FACES

FACE = SAMPLE_FACES / "AF1.jpg"  # 350 x 350, frontal
SIZE = 128  # the stand-in model's resolution: the face is resized to it and the change back


# ---- the value ------------------------------------------------------------------------------------------
def test_a_single_number_means_every_region():
    for value in ("0.7", 0.7, " 0.7 "):
        assert parse_intensity(value) == RegionIntensity(0.7, 0.7, 0.7)
    assert parse_intensity("0.7").uniform == 0.7 and str(parse_intensity(0.7)) == "0.7"
    assert parse_intensity(None) == RegionIntensity(1.0, 1.0, 1.0)


def test_a_mapping_gives_each_region_its_own_and_the_rest_keep_one():
    levels = parse_intensity("lips=1.2,eyes=0.6,skin=0")
    assert (levels.lips, levels.eyes, levels.skin) == (1.2, 0.6, 0.0) and levels.uniform is None
    assert str(levels) == "lips=1.2,eyes=0.6,skin=0"
    assert parse_intensity("lips=0") == RegionIntensity(lips=0.0, eyes=1.0, skin=1.0)
    assert parse_intensity({"eyes": 0.5}) == parse_intensity(OmegaConf.create({"eyes": 0.5}))
    assert parse_intensity("eyes: 0.5") == RegionIntensity(eyes=0.5)
    assert parse_intensity("lips=0.7,eyes=0.7,skin=0.7").uniform == 0.7


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lip=1", "unknown region 'lip' in intensity; valid: lips, eyes, skin"),
        ({"cheeks": 1}, "unknown region 'cheeks' in intensity; valid: lips, eyes, skin"),
        ("lips=1.6", "intensity lips must be between 0 and 1.5"),
        ("2", "intensity must be between 0 and 1.5"),
        ("nan", "intensity must be between 0 and 1.5"),
        ("lips=red", "not a number"),
        ("lips=1,lips=0", "given twice"),
        ("lips=1,eyes", "not REGION=NUMBER (REGION one of lips, eyes, skin)"),
        ({"lips": True}, "not a number"),
    ],
)
def test_a_bad_value_is_a_clear_error(value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_intensity(value)


def test_the_command_line_names_the_valid_regions(tmp_path, capsys):
    from tinybeauty_inference import main

    with pytest.raises(SystemExit) as err:
        main(["--style", "classic_red_lip", "--input", str(FACE), "--output", str(tmp_path / "o"),
              "--intensity", "lip=1"])  # fmt: skip
    assert err.value.code == 2
    assert "unknown region 'lip' in --intensity; valid: lips, eyes, skin" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- the weights ----------------------------------------------------------------------------------------
def test_weights_are_one_on_the_region_zero_beyond_the_feather_and_have_no_seam():
    makeup = np.zeros((100, 100), np.uint8)
    makeup[10:90, 10:90] = 3  # skin
    makeup[60:70, 35:65] = 2  # lips
    makeup[25:32, 20:40] = 1  # an eye
    weights = region_weights(makeup, reach=4)
    assert np.array_equal(weights["lips"] + weights["eyes"] + weights["skin"], np.ones((100, 100), np.float32))
    assert (weights["lips"][makeup == 2] == 1).all() and (weights["eyes"][makeup == 1] == 1).all()
    far = cv2.dilate((makeup == 2).astype(np.uint8), np.ones((19, 19), np.uint8)) == 0  # 9 px > 2 x reach
    assert (weights["lips"][far] == 0).all() and weights["lips"].min() >= 0
    # Feathered: from 1 to 0 over the 8 px outside the lips, never more than a third of the way in one pixel.
    assert 0 < weights["lips"][58, 50] < 1 and np.abs(np.diff(weights["lips"], axis=0)).max() < 0.34


# ---- a real face through tinybeauty_inference.py --------------------------------------------------------
@pytest.fixture(scope="module")
def stand_in_checkpoint(tmp_path_factory):
    """An untrained TinyBeauty at 128 px with a strong random head: it changes every part of the face."""
    from common import save_checkpoint
    from models.tinybeauty import TinyBeauty

    torch.manual_seed(0)
    model = TinyBeauty().eval()
    with torch.no_grad():
        model.head.weight.normal_(0.0, 1.0)
    path = tmp_path_factory.mktemp("stand_in") / "tinybeauty_final.pt"
    save_checkpoint({"arch": "tinybeauty", "model_kwargs": {}, "model": model.state_dict(),
                     "config": {"data": {"size": SIZE}}}, path)  # fmt: skip
    return path


def infer(tmp_path, intensity: str, *model: str, full_photo: bool = False) -> tuple[np.ndarray, dict]:
    from tinybeauty_inference import main

    out = tmp_path / f"out_{intensity.replace('=', '').replace(',', '_')}{'_photo' * full_photo}"
    summary = main([*model, "--input", str(FACE), "--output", str(out), "--intensity", intensity,
                    *(["--full-photo"] if full_photo else [])])  # fmt: skip
    return read_rgb(out / f"{FACE.stem}.png"), summary


@pytest.fixture(scope="module")
def face_regions():
    """The face's weights at the model's size, as the inference computes them, grown to the face's size with a
    margin of one model pixel (the bilinear resize of the change reaches that far): (lips, eyes) as
    (where the region's weight is 1, where it is above 0), each (350, 350) bool."""
    face = read_rgb(FACE)
    with RegionParser() as parser:
        weights = parser.weights(face, SIZE)
    grown = {}
    for name in ("lips", "eyes"):
        core = cv2.erode((weights[name] == 1).astype(np.uint8), np.ones((3, 3), np.uint8))
        reach = cv2.dilate((weights[name] > 0).astype(np.uint8), np.ones((3, 3), np.uint8))
        grown[name] = tuple(
            cv2.resize(m, face.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0 for m in (core, reach)
        )
    return grown


@pytest.mark.parametrize("only", ["lips", "eyes"])
def test_one_region_changes_that_region_only(stand_in_checkpoint, face_regions, tmp_path, only):
    model = ("--checkpoint", str(stand_in_checkpoint))
    face = read_rgb(FACE).astype(int)
    full, _ = infer(tmp_path, "1", *model)
    levels = ",".join(f"{name}={int(name == only)}" for name in ("lips", "eyes", "skin"))
    made, summary = infer(tmp_path, levels, *model)
    core, reach = face_regions[only]
    other_core, _ = face_regions["eyes" if only == "lips" else "lips"]
    assert summary["intensity"] == parse_intensity(levels).as_dict() and summary["regions_parsed"] == 1
    assert core.sum() > 100 and np.abs(full[core] - face[core]).mean() > 5  # the stand-in changes it plainly
    assert np.array_equal(made[~reach], face[~reach])  # outside the feathered region: the source exactly
    assert np.abs(made[core].astype(int) - full[core]).max() <= 1  # inside its core: the full makeup
    assert np.array_equal(made[other_core], face[other_core])


def test_skin_alone_keeps_lips_and_eyes_and_the_background_follows_skin(stand_in_checkpoint, face_regions, tmp_path):
    model = ("--checkpoint", str(stand_in_checkpoint))
    face = read_rgb(FACE).astype(int)
    full, _ = infer(tmp_path, "1", *model)
    made, _ = infer(tmp_path, "lips=0,eyes=0,skin=1", *model)
    for name in ("lips", "eyes"):
        core = face_regions[name][0]
        assert np.array_equal(made[core], face[core])
    outside = ~(face_regions["lips"][1] | face_regions["eyes"][1])
    assert np.abs(made[outside].astype(int) - full[outside]).max() <= 1
    assert np.abs(full[:40, :40] - face[:40, :40]).mean() > 1  # the corner (background) is changed, as by skin


def test_all_zero_is_the_input_and_equal_values_parse_nothing(stand_in_checkpoint, tmp_path, monkeypatch):
    import tinybeauty_inference

    model = ("--checkpoint", str(stand_in_checkpoint))
    single, _ = infer(tmp_path, "0.7", *model)

    def no_parse(*args, **kwargs):
        raise AssertionError("equal values must not parse the face")

    monkeypatch.setattr(tinybeauty_inference, "RegionParser", no_parse)
    same, summary = infer(tmp_path, "lips=0.7,eyes=0.7,skin=0.7", *model)
    assert np.array_equal(same, single) and summary["intensity"] == 0.7
    zero, _ = infer(tmp_path, "lips=0,eyes=0,skin=0", *model)
    assert np.array_equal(zero, read_rgb(FACE))


def test_a_style_and_a_full_photo_per_region(face_regions, tmp_path):
    """The shipped classic_red_lip (ONNX Runtime) paints lips and liner: lips only keeps the eyes as they were,
    on the face crop and with --full-photo (the photo's own parse)."""
    from data.face_parsing import FaceParser

    style = ("--style", "classic_red_lip")
    face = read_rgb(FACE).astype(int)
    full, _ = infer(tmp_path, "1", *style)
    made, _ = infer(tmp_path, "lips=1,eyes=0,skin=0", *style)
    eyes, lips = face_regions["eyes"][0], face_regions["lips"][0]
    assert np.abs(full[eyes] - face[eyes]).max() > 20 and np.array_equal(made[eyes], face[eyes])
    assert np.abs(full[lips] - face[lips]).mean() > 5 and np.abs(made[lips].astype(int) - full[lips]).max() <= 1

    photo_full, _ = infer(tmp_path, "1", *style, full_photo=True)
    photo_made, summary = infer(tmp_path, "lips=1,eyes=0,skin=0", *style, full_photo=True)
    assert summary["faces"] == 1 and summary["regions_parsed"] == 1
    with FaceParser(max_num_faces=1, eye_region="area") as parser:
        regions = parser.parse(read_rgb(FACE)).makeup
    eye_core = cv2.erode((regions == 1).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    lip_core = cv2.erode((regions == 2).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert np.abs(photo_full[eye_core] - face[eye_core]).max() > 20
    assert np.abs(photo_made[eye_core].astype(int) - face[eye_core]).max() <= 1
    assert np.abs(photo_made[lip_core].astype(int) - photo_full[lip_core]).max() <= 1


# ---- video ----------------------------------------------------------------------------------------------
def test_video_per_region_from_the_config(tmp_path):
    """Six still frames of the sample face (lossless FFV1), smoothing off: lips only leaves the eyes as decoded."""
    from bench.video_bench import background, write_clip
    from data.face_parsing import FaceParser
    from errors import ConfigError
    from tinybeauty_video import main

    frame = background(480, 360)
    frame[30:330, 90:390] = cv2.resize(cv2.cvtColor(read_rgb(FACE), cv2.COLOR_RGB2BGR), (300, 300))
    source = write_clip([frame] * 6, tmp_path / "still.avi", codec="FFV1")
    runs = {}
    for intensity in ("1", "lips=1,eyes=0,skin=0"):
        output = tmp_path / f"out{len(runs)}.mkv"
        summary = main(["--style", "classic_red_lip", "--input", str(source), "--output", str(output),
                        f"intensity={intensity}", "smoothing.enabled=false"])  # fmt: skip
        capture = cv2.VideoCapture(str(output))
        runs[intensity] = capture.read()[1].astype(int)
        capture.release()
    assert summary["intensity"] == {"lips": 1.0, "eyes": 0.0, "skin": 0.0} and summary["regions_parsed"] == 6
    with FaceParser(max_num_faces=1, eye_region="area") as parser:
        regions = parser.parse(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)).makeup
    eyes = cv2.erode((regions == 1).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    lips = cv2.erode((regions == 2).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    full, made = runs["1"], runs["lips=1,eyes=0,skin=0"]
    assert np.abs(full[eyes] - frame[eyes]).max() > 20 and np.abs(made[eyes] - frame[eyes]).max() <= 1
    assert np.abs(full[lips] - frame[lips]).mean() > 5 and np.abs(made[lips] - full[lips]).max() <= 1
    with pytest.raises(ConfigError, match="unknown region 'lip' in config key 'intensity'; valid: lips, eyes, skin"):
        main(["--style", "classic_red_lip", "--input", str(source), "--output", str(tmp_path / "x.mkv"),
              "intensity=lip=1"])  # fmt: skip

"""Face parser on the sample faces, makeup regions, and the hand-label converters."""

from __future__ import annotations

import numpy as np
import pytest

from data.face_parsing import (
    FINE_LABELS,
    FaceParser,
    from_celebamask,
    from_lapa,
    from_mt,
    makeup_regions,
)
from data.io import read_rgb
from tests.conftest import SAMPLE_FACES

F = FINE_LABELS


@pytest.fixture(scope="module")
def parser():
    with FaceParser() as p:
        yield p


@pytest.mark.parametrize("name", ["AF1.jpg", "CM10.jpg", "CF3.jpg"])
def test_parser_finds_regions_with_plausible_areas(parser, name):
    image = read_rgb(SAMPLE_FACES / name)
    result = parser.parse(image)
    assert result is not None
    assert result.fine.shape == image.shape[:2] and result.fine.dtype == np.uint8
    assert result.landmarks.shape == (478, 2) and result.landmarks.dtype == np.float32
    assert result.fine.max() <= 13 and result.makeup.max() <= 3
    area = {k: (result.fine == v).mean() for k, v in F.items()}
    assert 0.10 < area["skin"] + area["nose"] < 0.6  # SCUT faces fill much of the frame
    for region in ("l_brow", "r_brow", "l_eye", "r_eye"):
        assert 0.0005 < area[region] < 0.02, region
    assert 0.002 < area["upper_lip"] + area["lower_lip"] < 0.04
    assert 0.005 < area["nose"] < 0.08
    # The subject's left eye is on the image's right.
    left_x = np.nonzero(result.fine == F["l_eye"])[1].mean()
    right_x = np.nonzero(result.fine == F["r_eye"])[1].mean()
    assert left_x > right_x
    # Makeup map: every region present, the eye-makeup region sits above the eyes and off the eyeballs.
    makeup = result.makeup
    assert set(np.unique(makeup)) == {0, 1, 2, 3}
    eyes = np.isin(result.fine, [F["l_eye"], F["r_eye"]])
    assert not (makeup[eyes] == 1).any()
    assert np.nonzero(makeup == 1)[0].mean() < np.nonzero(eyes)[0].mean()
    assert (makeup[np.isin(result.fine, [F["upper_lip"], F["lower_lip"]])] == 2).all()


def test_parser_returns_none_without_a_face(parser):
    assert parser.parse(np.full((200, 200, 3), 127, np.uint8)) is None
    with pytest.raises(ValueError):
        parser.parse(np.zeros((20, 20), np.uint8))


def test_celebamask_converter():
    labels = np.arange(20, dtype=np.uint8).reshape(4, 5)  # every CelebAMask id, and 19 (not a class)
    fine = from_celebamask(labels).ravel()
    expected = [0, 1, 6, 0, 4, 5, 2, 3, 11, 12, 8, 7, 9, 10, 0, 0, 0, 13, 0, 0]
    assert fine.tolist() == expected


def test_mt_and_lapa_converters():
    labels = np.array([[0, 1, 2, 7], [9, 10, 13, 200]], np.uint8)
    assert from_mt(labels).tolist() == [[0, 1, 2, 7], [9, 10, 13, 0]]
    assert from_lapa(labels).tolist() == [[0, 1, 2, 7], [9, 10, 0, 0]]
    with pytest.raises(ValueError):
        from_mt(np.zeros((2, 2, 3), np.uint8))


def test_makeup_regions_from_a_synthetic_fine_map():
    fine = np.zeros((100, 100), np.uint8)
    fine[10:90, 10:90] = F["skin"]
    fine[30:34, 20:40] = F["r_brow"]
    fine[40:46, 22:38] = F["r_eye"]
    fine[70:74, 40:60] = F["upper_lip"]
    fine[74:78, 40:60] = F["lower_lip"]
    fine[55:65, 45:55] = F["nose"]
    fine[5:10, 10:90] = F["hair"]
    makeup = makeup_regions(fine)
    assert (makeup[70:78, 40:60] == 2).all()
    assert (makeup[40:46, 22:38] == 0).all()  # the eyeball is not makeup
    assert (makeup[30:34, 20:40] == 0).all()  # nor the brow
    lid = makeup == 1
    assert lid[34:40, 22:38].mean() > 0.8  # the lid between brow and eye
    assert not lid[:30].any() and not lid[60:].any()
    assert (makeup[55:65, 45:55] == 3).all()  # the nose is skin
    assert (makeup[5:10] == 0).all()  # hair is background


def test_cheek_map_sits_where_a_template_puts_the_blush(parser):
    """FGMM's cheek map, placed from the makeup mask alone, peaks on MediaPipe's cheek landmarks (205, 425:
    the centres of a template's blush) on every sample face, and is zero off the skin."""
    import torch

    from data.makeup_render import CHEEKS
    from models.fgmm import cheek_map

    checked = 0
    for path in sorted(SAMPLE_FACES.glob("*.jpg"))[:6]:
        parse = parser.parse(read_rgb(path))
        assert parse is not None, path
        cheeks = cheek_map(torch.from_numpy(parse.makeup.astype(np.int64))[None])[0, 0].numpy()
        for index in CHEEKS:
            x, y = np.round(parse.landmarks[index]).astype(int)
            assert cheeks[y, x] > 0.8, (path.name, index, float(cheeks[y, x]))  # within 0.13 eye distances
        assert not cheeks[parse.makeup != 3].any()
        assert cheeks.max() <= 1.0 and (cheeks > 0).mean() < 0.5 * (parse.makeup == 3).mean() + 0.1
        checked += 1
    assert checked == 6

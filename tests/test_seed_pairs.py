"""Stage 1 (make_seed_pairs.py): template pairs, their changed pixels, rerun, and each bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import make_seed_pairs
from common import load_config
from data.io import read_labels, read_rgb
from data.makeup_render import template_regions
from errors import MakeupError
from tests.conftest import REPO, SAMPLE_FACES

TEMPLATES = REPO / "configs" / "makeup"


def _faces(tmp_path, names=("AF1", "CM10", "CF3")):
    folder = tmp_path / "faces"
    folder.mkdir()
    for name in names:
        shutil.copy(SAMPLE_FACES / f"{name}.jpg", folder)
    return folder


@pytest.mark.parametrize("template", ["classic_red_lip", "smoky_eye", "natural"])
def test_template_change_stays_in_its_regions(tmp_path, template):
    faces, out = _faces(tmp_path, ("AF1", "CM10")), tmp_path / "pairs"
    path = TEMPLATES / f"{template}.yaml"
    summary = make_seed_pairs.main(["--faces", str(faces), "--template", str(path), "--num", "2",
                                    "--output", str(out), "--size", "256"])  # fmt: skip
    assert summary["pairs_made"] == 2 and summary["pairs_total"] == 2 and summary["skipped"] == []
    assert (out / "contact_sheet.png").is_file()
    assert json.loads((out / "summary.json").read_text())["template"]["name"] == template
    regions = template_regions(load_config(TEMPLATES / "natural.yaml", config_path=path))
    for name in summary["names"]:
        source, target = read_rgb(out / "source" / f"{name}.png"), read_rgb(out / "target" / f"{name}.png")
        mask = read_labels(out / "mask" / f"{name}.png")
        assert source.shape == (256, 256, 3) and mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 1, 2, 3}
        energy = ((target.astype(float) - source) ** 2).sum(-1)
        assert energy.sum() > 0
        inside = energy[np.isin(mask, regions)].sum() / energy.sum()
        assert inside >= 0.95, f"{template} {name}: only {inside:.3f} of the change inside regions {regions}"


def test_rerun_keeps_pairs_and_too_few_faces_names_files(tmp_path):
    faces, out = _faces(tmp_path, ("AF1",)), tmp_path / "pairs"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(faces / "blank.png")
    (faces / "broken.jpg").write_bytes(b"not a jpeg")
    args = ["--faces", str(faces), "--template", str(TEMPLATES / "natural.yaml"), "--output", str(out), "--size", "128"]
    first = make_seed_pairs.main([*args, "--num", "1"])
    assert first["pairs_made"] == 1
    with pytest.raises(MakeupError, match=r"only 1 of 3 pairs") as failure:
        make_seed_pairs.main([*args, "--num", "3"])
    assert "blank.png (no face found)" in str(failure.value) and "broken.jpg (not a readable image" in str(
        failure.value
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs_made"] == 0 and summary["pairs_kept"] == 1 and summary["pairs_total"] == 1
    assert {s["reason"] for s in summary["skipped"] if s["file"].endswith("blank.png")} == {"no face found"}


def test_bad_template_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lipstick:\n  opacity: lots\n")
    with pytest.raises(MakeupError, match="lipstick.opacity"):
        make_seed_pairs.main(
            ["--faces", str(_faces(tmp_path)), "--template", str(bad), "--output", str(tmp_path / "o")]
        )


def test_import_pairs_and_each_error(tmp_path):
    before, after, out = tmp_path / "before", tmp_path / "after", tmp_path / "pairs"
    before.mkdir(), after.mkdir()
    face = read_rgb(SAMPLE_FACES / "AF1.jpg")
    other = read_rgb(SAMPLE_FACES / "CM10.jpg")
    made_up = face.copy()
    made_up[230:260, 130:220] = (made_up[230:260, 130:220] * [1.0, 0.6, 0.6]).astype(np.uint8)
    Image.fromarray(face).save(before / "good.png")
    Image.fromarray(made_up).save(after / "good.png")
    Image.fromarray(other).save(before / "shifted.png")
    Image.fromarray(np.roll(other, 12, axis=1)).save(after / "shifted.png")
    Image.fromarray(face).save(before / "size.png")
    Image.fromarray(face[:300]).save(after / "size.png")
    Image.fromarray(face).save(before / "alone.png")
    (before / "broken.png").write_bytes(b"\x89PNG broken")
    Image.fromarray(face).save(after / "broken.png")
    Image.fromarray(np.full((300, 300, 3), 100, np.uint8)).save(before / "noface.png")
    Image.fromarray(np.full((300, 300, 3), 100, np.uint8)).save(after / "noface.png")

    summary = make_seed_pairs.main(["--import", str(before), str(after), "--output", str(out), "--size", "256"])
    assert summary["names"] == ["good", "shifted"] and summary["mode"] == "import"
    reasons = {s["file"].split("/")[-1]: s["reason"] for s in summary["skipped"]}
    assert "no file named alone" in reasons["alone.png"]
    assert "not a readable image" in reasons["broken.png"]
    assert "size differs" in reasons["size.png"]
    assert reasons["noface.png"] == "no face found"
    assert len(summary["warnings"]) == 1 and "shifted" in summary["warnings"][0]
    # The after photo goes through the before photo's crop: the pair lines up where nothing was painted.
    source, target = read_rgb(out / "source" / "good.png"), read_rgb(out / "target" / "good.png")
    assert np.abs(source.astype(int) - target)[:60].max() <= 2 and np.abs(source.astype(int) - target).max() > 30

    with pytest.raises(MakeupError, match="import folder not found"):
        make_seed_pairs.main(["--import", str(before), str(tmp_path / "nope"), "--output", str(out)])
    empty_b, empty_a = tmp_path / "eb", tmp_path / "ea"
    empty_b.mkdir(), empty_a.mkdir()
    (empty_b / "x.png").write_bytes(b"junk")
    (empty_a / "x.png").write_bytes(b"junk")
    with pytest.raises(MakeupError, match=r"no usable before/after pairs.*x\.png"):
        make_seed_pairs.main(["--import", str(empty_b), str(empty_a), "--output", str(tmp_path / "o2")])

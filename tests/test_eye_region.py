"""The masks' eye region (`eye_region`: lid | area) from the parser through stage 1, the DDA and stage 3.

A learned style paints where the "lid" eye region does not reach (darker brows, a lash line on the rim of
the eye), and FGMM keeps label 0 as the source: "area" puts the brows and eye openings into label 1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

import dda_amplify
import make_seed_pairs
from data.amplify_manifest import check_settings, plan_jobs
from data.face_parsing import FINE_LABELS, FaceParser, makeup_regions
from data.io import read_labels, read_rgb
from errors import ConfigError, InputError
from tests.conftest import SAMPLE_FACES

F = FINE_LABELS


def test_area_adds_the_brows_and_eye_openings_to_the_eye_label_and_nothing_else():
    with FaceParser() as lid_parser, FaceParser(eye_region="area") as area_parser:
        image = read_rgb(SAMPLE_FACES / "AF1.jpg")
        lid, area = lid_parser.parse(image), area_parser.parse(image)
    assert np.array_equal(lid.fine, area.fine)
    brows_and_eyes = np.isin(lid.fine, [F["l_brow"], F["r_brow"], F["l_eye"], F["r_eye"]])
    assert brows_and_eyes.any() and (area.makeup[brows_and_eyes] == 1).all()
    assert not (lid.makeup[brows_and_eyes] == 1).any()
    assert np.array_equal(lid.makeup[~brows_and_eyes], area.makeup[~brows_and_eyes])  # lips, skin, lids unchanged
    assert np.array_equal(makeup_regions(lid.fine, "area"), area.makeup)
    with pytest.raises(ValueError, match="eye_region"):
        makeup_regions(lid.fine, "brows")


def test_stage_1_writes_and_records_it_and_keeps_a_folder_to_one_convention(tmp_path):
    before, after, out = tmp_path / "before", tmp_path / "after", tmp_path / "pairs"
    before.mkdir(), after.mkdir()
    face = read_rgb(SAMPLE_FACES / "AF1.jpg")
    Image.fromarray(face).save(before / "a.png")
    Image.fromarray(face).save(after / "a.png")
    summary = make_seed_pairs.main(["--import", str(before), str(after), "--output", str(out), "--size", "256",
                                    "--eye-region", "area"])  # fmt: skip
    assert summary["eye_region"] == "area"
    with FaceParser(eye_region="area") as parser:
        expected = parser.parse(read_rgb(out / "source" / "a.png")).makeup
    assert np.array_equal(read_labels(out / "mask" / "a.png"), expected)
    with pytest.raises(InputError, match="--eye-region area, not lid"):
        make_seed_pairs.main(["--import", str(before), str(after), "--output", str(out), "--size", "256",
                              "--eye-region", "lid"])  # fmt: skip
    # an import's default is area (a learned style's seeds do not say where it paints), a template's lid
    assert make_seed_pairs.parse_args(["--import", str(before), str(after), "--output", "x"]).eye_region == "area"
    template = ["--faces", str(SAMPLE_FACES), "--template", "configs/makeup/classic_red_lip.yaml", "--output", "x"]
    assert make_seed_pairs.parse_args(template).eye_region == "lid"


def test_the_dda_records_its_seeds_convention_and_stage_3_follows_it(tmp_path):
    from dda_training import seed_eye_region

    seeds = tmp_path / "seeds"
    seeds.mkdir()
    assert seed_eye_region(seeds) == "lid"  # a folder without a summary (the user's own masks)
    (seeds / "summary.json").write_text(json.dumps({"eye_region": "area"}))
    assert seed_eye_region(seeds) == "area"

    class Stub:  # a loaded DDA, as far as stage 3 asks
        eye_region = "area"

    cfg = OmegaConf.create({"checkpoint": "a.pt", "face": {"eye_region": None}})
    dda_amplify.resolve_eye_region(cfg, {"a.pt": Stub()})
    assert cfg.face.eye_region == "area"
    cfg.face.eye_region = "wide"
    with pytest.raises(ConfigError, match="face.eye_region"):
        dda_amplify.resolve_eye_region(cfg, {"a.pt": Stub()})


def test_checkpoints_and_manifests_from_before_read_as_lid(tiny_sd, tmp_path):
    from common import save_checkpoint
    from models.dda_io import load_dda
    from tests.test_region_conditioning import build

    dda = build(tiny_sd, False)
    dda.eye_region = "area"
    state = dda.state()
    save_checkpoint({"dda": state}, tmp_path / "new.pt")
    assert load_dda(tmp_path / "new.pt").eye_region == "area"
    del state["settings"]["eye_region"]
    save_checkpoint({"dda": state}, tmp_path / "old.pt")
    assert load_dda(tmp_path / "old.pt").eye_region == "lid"
    # A manifest line written before the key existed was made with lid masks: resuming with lid goes on,
    # with area it stops.
    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(faces / "f.png")
    (job,) = plan_jobs(faces, None, 1, 0)
    settings = {"seed": job.seed, "strength": 0.3, "num_steps": 10, "scheduler": "ddim", "guidance_scale": 1.0,
                "region_weights": {}, "style": "a.pt", "resolution": 64}  # fmt: skip
    records = {"f.png#0": {"input": "f.png", "variant": 0, "name": "f", "status": "ok", **settings}}
    check_settings(records, [job], {**settings, "eye_region": "lid"}, tmp_path)
    with pytest.raises(InputError, match="eye_region='lid'"):
        check_settings(records, [job], {**settings, "eye_region": "area"}, tmp_path)


@pytest.mark.slow
def test_stage_2_records_the_seeds_convention_in_the_dda_and_its_folds(tiny_sd, pairs5, tmp_path):
    import shutil

    import dda_training
    from models.dda_io import load_dda
    from tests.test_dda import cli_config

    seeds = tmp_path / "seeds"
    shutil.copytree(pairs5, seeds)
    (seeds / "summary.json").write_text(json.dumps({"eye_region": "area"}))
    out = tmp_path / "dda"
    dda_training.main(cli_config(tiny_sd, seeds, out, "train.epochs=1", "calibrate=1", "train.sample_every=100"))
    assert load_dda(out / "dda_final.pt").eye_region == "area"
    assert json.loads((out / "dda_modules.json").read_text())["eye_region"] == "area"
    assert load_dda(out / "calibration" / "fold_0" / "dda_final.pt").eye_region == "area"

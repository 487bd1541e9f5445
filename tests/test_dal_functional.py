"""What the amplifier carries to unseen faces, on CPU: a test of learning, not of files.

The default amplifier (configs/dda.yaml `amplifier`) on five template seed pairs must bring unseen faces' lips and
liner most of the way toward the template's (the template rendered on the very crops the amplifier wrote is the
truth) and leave the background exactly the source. The DDA alone (`amplifier=dda`), trained briefly over the
shipped face prior (weights/face_prior), must move the lips a measurable part of the way.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import REPO, SAMPLE_FACES

pytestmark = pytest.mark.slow  # trains a model, runs the stages or drives a browser

FACE_PRIOR = REPO / "weights" / "face_prior"
TEMPLATE = REPO / "configs" / "makeup" / "classic_red_lip.yaml"
# The demo's DDA setting (configs/demo/dda.yaml), shortened: 5 pairs x EPOCHS steps at 128 px.
EPOCHS = 40


def run_chain(work, *stage2: str):
    """Stages 1-3 on the bundled faces: five seeds, the other faces amplified; returns the amplified folder."""
    import dda_amplify
    import dda_training
    import make_seed_pairs

    faces = sorted(SAMPLE_FACES.glob("*.jpg"))
    seed_faces, unseen = work / "seed_faces", work / "unseen"
    seed_faces.mkdir()
    unseen.mkdir()
    for i, face in enumerate(faces):
        ((seed_faces if i < 5 else unseen) / face.name).write_bytes(face.read_bytes())
    seeds = work / "seeds"
    make_seed_pairs.main(["--faces", str(seed_faces), "--template", str(TEMPLATE), "--num", "5"]
                         + ["--size", "256", "--output", str(seeds)])  # fmt: skip
    dda_dir = work / "dda"
    dda_training.main(
        ["--config", str(REPO / "configs" / "demo" / "dda.yaml"), f"model.pretrained={FACE_PRIOR}"]
        + [f"data.root={seeds}", f"output_dir={dda_dir}", "wandb.mode=disabled", *stage2]
    )
    amplified = work / "amplified"
    dda_amplify.main(
        [f"checkpoint={dda_dir / 'dda_final.pt'}", f"input_dir={unseen}", f"output_dir={amplified}", "num_images=4"]
        + ["wandb.mode=disabled", "resolution=256"]
    )
    return amplified


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The DDA alone, briefly trained."""
    if not (FACE_PRIOR / "model_index.json").is_file():
        pytest.fail(f"the shipped face prior is missing: {FACE_PRIOR}")
    work = tmp_path_factory.mktemp("dal")
    stage2 = ["amplifier=dda", f"train.epochs={EPOCHS}", "train.sample_every=1000", "train.checkpoint_every=1000"]
    return work, run_chain(work, *stage2)


@pytest.fixture(scope="module")
def default_amplifier(tmp_path_factory):
    """The default amplifier, with the demo's settings."""
    work = tmp_path_factory.mktemp("dal_default")
    return work, run_chain(work, f"train.epochs={EPOCHS}", "train.sample_every=1000", "train.checkpoint_every=1000")


def test_the_default_amplifier_brings_the_lips_and_the_liner(default_amplifier):
    from data.makeup_render import load_template
    from data.makeup_truth import score_against_truth

    work, amplified = default_amplifier
    scores = score_against_truth(amplified, load_template(str(TEMPLATE)), work / "truth")
    print(json.dumps(scores))
    assert scores["faces"] >= 3
    assert 0.7 < scores["lip_change_ratio"] < 1.3 and scores["lip_error_reduction"] > 0.6  # most of the lipstick
    assert scores["r2_eyes"] > 0.4  # the liner: the eye region's change follows the template's
    assert scores["r2"] > 0.6


def test_the_default_amplifier_leaves_the_background(default_amplifier):
    check_background(default_amplifier[1])


def test_dda_moves_unseen_lips_towards_the_template(trained):
    from data.makeup_render import load_template
    from data.makeup_truth import score_against_truth

    work, amplified = trained
    scores = score_against_truth(amplified, load_template(str(TEMPLATE)), work / "truth")
    print(json.dumps(scores))
    assert scores["faces"] >= 3
    # the lips moved a measurable part of the way: a quarter of the truth's change, and towards it
    assert scores["lip_change_ratio"] > 0.25
    assert scores["lip_error_reduction"] > 0.1


def test_background_is_exactly_the_source(trained):
    check_background(trained[1])


def check_background(amplified):
    from data.io import list_images, read_labels, read_rgb

    for path in list_images(amplified / "source"):
        source, target = read_rgb(path), read_rgb(amplified / "target" / path.name)
        background = read_labels(amplified / "mask" / path.name) == 0
        assert background.mean() > 0.2
        np.testing.assert_array_equal(target[background], source[background])
        assert not np.array_equal(target, source)  # and the face did change

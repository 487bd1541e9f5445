"""The landmark warp (data/face_warp.py) and the makeup draft (data/makeup_draft.py).

The warp is tested on synthetic faces whose landmarks are known exactly: the identity warp gives the image back, a
known affine is recovered, a flipped triangle is found and left out. The draft is tested on the bundled sample
faces made up by a template (the renderer of stage 1), with their FaceMesh landmarks.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from data.face_parsing import FINE_LABELS, LEFT_EYE, RIGHT_EYE, UPPER_LIP_OUTER, FaceParser
from data.face_warp import MESH_POINTS, MIRROR, FaceWarp, mirror_landmarks, warp_points
from data.makeup_draft import (
    DraftSettings,
    MakeupDraft,
    SeedFace,
    decode,
    encode,
    leave_one_out,
    seed_faces,
)
from data.paired import Pair
from errors import ConfigError, InputError
from tests.conftest import REPO, SAMPLE_FACES

SIZE = 128


def synthetic_landmarks(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """468 points scattered over the middle of the image: a stand-in for a face's mesh."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2 * size, 0.8 * size, size=(MESH_POINTS, 2))


def smooth_image(seed: int = 0, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(12, 12, 3)).astype(np.uint8)
    return cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)


# --------------------------------------------------------------------------------------------
# The warp
# --------------------------------------------------------------------------------------------
def test_the_identity_warp_gives_the_image_back():
    landmarks = synthetic_landmarks()
    warp = FaceWarp(landmarks, SIZE)
    mapping = warp.mapping(warp.reference, warp.reference, (SIZE, SIZE))
    assert mapping.valid.all() and mapping.folded_triangles == 0
    image = smooth_image()
    np.testing.assert_array_equal(mapping.apply(image), image)


def test_a_known_affine_is_recovered():
    """Landmarks moved by an affine: the map is that affine's inverse at every pixel, and the warped image is what
    cv2.warpAffine makes of it (away from the border, where the anchors stay put)."""
    landmarks = synthetic_landmarks(1)
    warp = FaceWarp(landmarks, SIZE)
    centre = np.array([SIZE / 2, SIZE / 2])
    turn = np.radians(8.0)
    linear = 1.1 * np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    moved = (landmarks - centre) @ linear.T + centre + [3.0, -2.0]
    destination = warp_points(moved, SIZE, SIZE)
    mapping = warp.mapping(warp.reference, destination, (SIZE, SIZE))
    # well inside the landmarks' hull: there every triangle is made of landmarks (near the hull, Delaunay may join
    # a landmark to a border anchor, which the affine does not move)
    hull = cv2.convexHull(moved.astype(np.float32)).astype(np.int32)
    inside = cv2.erode(cv2.fillConvexPoly(np.zeros((SIZE, SIZE), np.uint8), hull, 1), np.ones((15, 15), np.uint8))
    inside = inside.astype(bool)
    assert inside.sum() > 0.15 * SIZE * SIZE
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5  # pixel centres, continuous coordinates
    back = np.linalg.inv(linear)
    expected = (np.stack([xs, ys], -1) - centre - [3.0, -2.0]) @ back.T + centre - 0.5
    np.testing.assert_allclose(mapping.map_x[inside], expected[inside][:, 0], atol=1e-3)
    np.testing.assert_allclose(mapping.map_y[inside], expected[inside][:, 1], atol=1e-3)
    image = smooth_image(2)
    forward = np.hstack([linear, (centre + [3.0, -2.0] - linear @ centre)[:, None]])  # continuous coordinates
    forward[:, 2] += forward[:, :2] @ [0.5, 0.5] - 0.5  # to OpenCV's pixel-centre convention
    reference = cv2.warpAffine(image, forward, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
    difference = np.abs(mapping.apply(image).astype(int) - reference)[inside]
    assert difference.max() <= 2


def test_a_folded_triangle_is_detected_and_left_out():
    landmarks = synthetic_landmarks(3)
    warp = FaceWarp(landmarks, SIZE)
    # Push one landmark far across its neighbours: its triangles flip.
    folded = landmarks.copy()
    index = int(np.argmin(np.abs(landmarks - SIZE / 2).sum(1)))
    folded[index] += [25.0, 25.0]
    mapping = warp.mapping(warp.reference, warp_points(folded, SIZE, SIZE), (SIZE, SIZE))
    assert mapping.folded_triangles > 0
    assert 0 < mapping.folded_share() < 0.2
    out = mapping.apply(np.full((SIZE, SIZE, 3), 200, np.uint8), fill=0)
    assert (out[~mapping.valid] == 0).all() and (out[mapping.valid] == 200).all()


def test_a_face_at_another_size_is_not_taken_for_folded():
    """The same face at an eighth of the reference's size: every triangle 1/64 as large, none folded (the
    fold test compares shares of the image, not pixels), in either direction."""
    landmarks = synthetic_landmarks(4)
    warp = FaceWarp(landmarks, SIZE)
    small = SIZE // 8
    mapping = warp.mapping(warp.reference, warp_points(landmarks / 8, small, small), (small, small))
    assert mapping.folded_triangles == 0 and mapping.valid.all()
    back = warp.mapping(warp_points(landmarks / 8, small, small), warp.reference, (SIZE, SIZE))
    assert back.folded_triangles == 0


def test_facemesh_mirror_is_an_involution_and_a_symmetry_of_the_mesh():
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    mirror = np.array(MIRROR)
    assert sorted(mirror) == list(range(478)) and (mirror[mirror] == np.arange(478)).all()
    assert sorted(mirror[LEFT_EYE]) == sorted(RIGHT_EYE) and sorted(mirror[UPPER_LIP_OUTER]) == sorted(UPPER_LIP_OUTER)
    assert mirror[1] == 1 and mirror[33] == 263 and mirror[61] == 291
    edges = {frozenset(edge) for edge in FACEMESH_TESSELATION}
    broken = [e for e in edges if frozenset(mirror[list(e)]) not in edges]
    assert len(broken) <= 6  # the quads whose diagonal FaceMesh draws the same way on both sides
    landmarks = synthetic_landmarks(4)
    landmarks = np.concatenate([landmarks, synthetic_landmarks(5)[:10]])  # 478 points
    np.testing.assert_allclose(mirror_landmarks(mirror_landmarks(landmarks, SIZE), SIZE), landmarks)


# --------------------------------------------------------------------------------------------
# The draft on real faces
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_seeds():
    """The 16 bundled faces, aligned as stage 1 aligns them, made up by classic_red_lip (lipstick and liner)."""
    from data.face_align import FaceAligner
    from data.io import list_images, read_rgb
    from data.makeup_render import load_template, render_makeup

    template = load_template(str(REPO / "configs" / "makeup" / "classic_red_lip.yaml"))
    faces = {}
    with FaceAligner(size=192) as aligner, FaceParser() as parser:
        for path in list_images(SAMPLE_FACES):
            crop = aligner.detect(read_rgb(path))[0].crop
            parse = parser.parse(crop)
            faces[path.stem] = (SeedFace(path.stem, crop, render_makeup(crop, parse, template), parse.makeup,
                                         parse.landmarks), parse)  # fmt: skip
    return faces


EXACT = DraftSettings(mirror=False, smooth={"eyes": None, "lips": None, "skin": None})


def test_a_seed_drafted_from_itself_is_its_target(sample_seeds):
    """All five, in sample: a draft fitted on one seed alone brings that seed's target back within rounding inside
    its makeup regions (with the draft's smoothing and mirroring off: they trade this for unseen faces)."""
    for name in ["AF1", "AF25", "AM2", "CF3", "CM10"]:
        seed = sample_seeds[name][0]
        made_up, info = MakeupDraft.fit([seed], EXACT).apply(seed.source, seed.landmarks, seed.mask)
        inside = seed.mask > 0
        assert info["folded_share"] == 0.0
        assert np.abs(made_up.astype(int) - seed.target)[inside].max() <= 1, name
        np.testing.assert_array_equal(made_up[~inside], seed.source[~inside])


def test_unseen_faces_get_the_lips_and_the_liner(sample_seeds):
    """Drafted from five other faces, an unseen face's lips and liner region move toward the template's, by the
    default settings: most of the way, and much closer than the plain face."""
    names = sorted(sample_seeds)
    seeds = [sample_seeds[n][0] for n in names[:5]]
    draft = MakeupDraft.fit(seeds, DraftSettings())
    for name in names[5:9]:
        face = sample_seeds[name][0]
        made_up, _ = draft.apply(face.source, face.landmarks, face.mask)
        for label in (1, 2):  # eyes (the liner), lips
            region = face.mask == label
            before = ((face.source.astype(float) - face.target)[region] ** 2).sum()
            after = ((made_up.astype(float) - face.target)[region] ** 2).sum()
            assert after < 0.6 * before, (name, label, after / before)


def test_an_open_mouth_keeps_its_teeth(sample_seeds):
    """CM21's mouth is open: the teeth and the dark inside (no makeup label) stay the source's exactly, while the
    lips around them change."""
    seeds = [sample_seeds[n][0] for n in ["AF1", "AF12", "AF40", "AM15", "CF27"]]
    face, parse = sample_seeds["CM21"]
    mouth = parse.fine == FINE_LABELS["mouth"]
    assert mouth.sum() > 200
    made_up, _ = MakeupDraft.fit(seeds, DraftSettings()).apply(face.source, face.landmarks, face.mask)
    np.testing.assert_array_equal(made_up[mouth], face.source[mouth])
    lips = face.mask == 2
    assert np.abs(made_up.astype(int) - face.source)[lips].mean() > 10


def test_region_weights_scale_the_draft_and_zero_keeps_the_source(sample_seeds):
    seeds = [sample_seeds[n][0] for n in ["AF1", "AF12", "AF40", "AM15", "CF27"]]
    face = sample_seeds["CM10"][0]
    draft = MakeupDraft.fit(seeds, DraftSettings())
    full, _ = draft.apply(face.source, face.landmarks, face.mask)
    lips_only, _ = draft.apply(face.source, face.landmarks, face.mask, {"eyes": 0, "skin": 0})
    not_lips = face.mask != 2
    np.testing.assert_array_equal(lips_only[not_lips], face.source[not_lips])
    np.testing.assert_array_equal(lips_only[face.mask == 2], full[face.mask == 2])


def test_leave_one_out_drafts_each_seed_from_the_others(sample_seeds):
    seeds = [sample_seeds[n][0] for n in ["AF1", "AF12", "AF40"]]
    drafted = leave_one_out(seeds, DraftSettings())
    assert set(drafted) == {"AF1", "AF12", "AF40"}
    alone = MakeupDraft.fit(seeds[1:], DraftSettings()).apply(seeds[0].source, seeds[0].landmarks, seeds[0].mask)[0]
    np.testing.assert_array_equal(drafted["AF1"][0], alone)
    # not the seed's own target: the others' change
    assert not np.array_equal(drafted["AF1"][0], seeds[0].target)


def test_the_draft_saves_and_loads(sample_seeds, tmp_path):
    from common import load_checkpoint, save_checkpoint

    seeds = [sample_seeds[n][0] for n in ["AF1", "AF12", "AF40"]]
    draft = MakeupDraft.fit(seeds, DraftSettings())
    path = save_checkpoint({"draft": draft.state()}, tmp_path / "draft.pt")
    loaded = MakeupDraft.from_state(load_checkpoint(path)["draft"])
    face = sample_seeds["CM10"][0]
    np.testing.assert_array_equal(
        loaded.apply(face.source, face.landmarks, face.mask)[0], draft.apply(face.source, face.landmarks, face.mask)[0]
    )


@pytest.mark.parametrize("space,tolerance", [("rgb", 0), ("lab", 1), ("linear", 0)])
def test_colour_spaces_round_trip(space, tolerance):
    """A zero change gives the face back: exactly in sRGB and linear RGB, within OpenCV's float32 CIELAB rounding."""
    image = smooth_image(6)
    assert np.abs(decode(encode(image, space), space).astype(int) - image).max() <= tolerance


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
def test_a_seed_without_landmarks_is_named(tmp_path):
    from PIL import Image

    for sub in ("source", "target"):
        (tmp_path / sub).mkdir()
        Image.new("RGB", (96, 96), (120, 90, 80)).save(tmp_path / sub / "plain_wall.png")
    pair = Pair("plain_wall", tmp_path / "source" / "plain_wall.png", tmp_path / "target" / "plain_wall.png")
    with FaceParser() as parser, pytest.raises(InputError, match="plain_wall"):
        seed_faces([pair], None, parser)


def test_unknown_draft_keys_and_values_name_the_key():
    with pytest.raises(ValueError, match="draft.colour"):
        DraftSettings.from_config({"colour": "red"})
    with pytest.raises(ValueError, match="draft.space"):
        DraftSettings.from_config({"space": "hsv"})
    with pytest.raises(ValueError, match="draft.smooth.nose"):
        DraftSettings.from_config({"smooth": {"nose": 2}})


def test_the_draft_from_a_checkpoint_without_one_names_the_key_and_the_checkpoint(tmp_path):
    from common import save_checkpoint
    from models.dda_io import load_amplifier

    old = save_checkpoint({"dda": {"settings": {}}, "config": {}}, tmp_path / "dda_final.pt")  # before the draft
    with pytest.raises(ConfigError, match=r"'amplifier'.*draft.*dda_final\.pt.*no makeup draft"):
        load_amplifier(old, "draft")
    draft_only = save_checkpoint({"amplifier": "draft", "draft": {}, "config": {}}, tmp_path / "draft_final.pt")
    with pytest.raises(ConfigError, match=r"'amplifier'.*draft\+dda.*draft_final\.pt.*no DDA"):
        load_amplifier(draft_only, "draft+dda")
    with pytest.raises(ConfigError, match="amplifier"):
        load_amplifier(draft_only, "paint")
    assert torch.load(old, weights_only=True).get("amplifier") is None  # a pre-draft checkpoint says nothing

"""bench/dal_eval.py: the VAE ceiling (what a perfect latent edit could reach through a base model's VAE) and the
split of unseen faces."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from bench.dal_eval import seed_face_digests, split_faces, vae_ceiling


class IdentityVAE(nn.Module):
    """encode/decode with diffusers' interface that lose nothing: the ceiling is then set by resolution alone."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def encode(self, images):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=images))

    def decode(self, latents):
        return SimpleNamespace(sample=latents)


def _pair(seed: int, size: int = 32):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 60, size)[None, :, None] + np.linspace(0, 30, size)[:, None, None]
    source = (rng.integers(60, 140, 3)[None, None] + ramp).astype(np.uint8)  # smooth skin-like shading
    mask = np.zeros((size, size), np.uint8)
    mask[20:26, 10:22] = 2  # lips
    mask[8:11, 6:14] = 1  # a thin eye band
    target = source.copy()
    target[mask == 2] = (0.4 * target[mask == 2] + 0.6 * np.array([200, 20, 40])).astype(np.uint8)
    target[8:9, 6:14] = 10  # a 1-px liner
    return source, target, mask


def test_a_lossless_vae_at_full_size_reaches_the_truth():
    pairs = {f"f{i}": _pair(i) for i in range(3)}
    result = vae_ceiling(IdentityVAE(), pairs, 32)
    assert result["r2"] == 1.0 and result["r2_lips"] == 1.0 and result["r2_eyes"] == 1.0
    assert result["resolution"] == 32


def test_half_resolution_loses_the_thin_liner_and_background_stays_the_source():
    pairs = {f"f{i}": _pair(i) for i in range(3)}
    half = vae_ceiling(IdentityVAE(), pairs, 16)
    assert half["r2"] < 0.95 and half["r2_lips"] < 1.0
    assert half["r2_eyes"] < 0.5  # a 1-px line does not survive 16 px and back
    # Outside the makeup labels the prediction is the source: PSNR against the truth stays finite and above identity.
    assert half["psnr_db"] > half["identity_psnr_db"]


def _faces_folder(root, count: int):
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), i * 9, np.uint8)).save(root / f"face{i:02d}.png")
    return root


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_split_leaves_the_seed_faces_out_of_the_unseen_faces(tmp_path):
    faces = _faces_folder(tmp_path / "faces", 12)
    plain = split_faces(faces, tmp_path / "plain", 6, 4, seed=0)
    # The seed photos are copies under other names (as data/samples/faces copies shared/data/faces);
    # stage 1 used two of the three (its pairs are named by the photo's stem).
    seed_faces, seed_dir = tmp_path / "seed_faces", tmp_path / "seed_pairs"
    seed_faces.mkdir()
    (seed_dir / "source").mkdir(parents=True)
    used = _names(plain[0])[:2]
    for i, name in enumerate(used + [_names(plain[1])[0]]):
        shutil.copy(faces / name, seed_faces / f"sample{i}.png")
    for i in range(2):
        shutil.copy(seed_faces / f"sample{i}.png", seed_dir / "source" / f"sample{i}.png")
    exclude = seed_face_digests(seed_faces, seed_dir)
    assert len(exclude) == 2
    amplify, heldout, left_out = split_faces(faces, tmp_path / "clean", 6, 4, seed=0, exclude=exclude)
    assert left_out == used
    assert not set(used) & set(_names(amplify) + _names(heldout))
    assert len(_names(amplify)) == 6 and len(_names(heldout)) == 4
    assert set(_names(plain[0])) - set(used) <= set(_names(amplify))  # the other faces keep their places
    assert json.loads((tmp_path / "clean" / "split.json").read_text())["excluded"] == used
    with pytest.raises(SystemExit, match="besides the 2 seed faces"):
        split_faces(faces, tmp_path / "big", 6, 5, seed=0, exclude=exclude)
    with pytest.raises(SystemExit, match="was made for the split"):  # the folder made without the exclusion
        split_faces(faces, tmp_path / "plain", 6, 4, seed=0, exclude=exclude)


def _style_folder(root, count: int):
    from PIL import Image

    for kind in ("source", "target"):
        (root / kind).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((8, 8, 3), i * 9 + (kind == "target"), np.uint8)).save(
                root / kind / f"p{i:02d}.png"
            )
    return root


def test_style_split_is_disjoint_and_recorded(tmp_path):
    from bench.dal_eval import split_style_pairs

    pairs = _style_folder(tmp_path / "style", 12)
    split = split_style_pairs(pairs, tmp_path / "work", seeds=3, heldout=4, seed=0)
    assert [len(split[k]) for k in ("seeds", "heldout", "pool")] == [3, 4, 5]
    assert sorted(split["seeds"] + split["heldout"] + split["pool"]) == [f"p{i:02d}" for i in range(12)]
    assert split_style_pairs(pairs, tmp_path / "work", seeds=3, heldout=4, seed=0) == split  # the same again
    with pytest.raises(SystemExit, match="another split"):
        split_style_pairs(pairs, tmp_path / "work", seeds=3, heldout=4, seed=1)
    with pytest.raises(SystemExit, match="12 pairs"):
        split_style_pairs(pairs, tmp_path / "small", seeds=5, heldout=7, seed=0)


def test_style_truth_cuts_the_target_exactly_where_stage_3_cut_the_source(tmp_path):
    """A style's truth for an amplified face is its own target photo through stage 3's affine: with the plain photo
    as the 'target', the truth is the amplified source crop pixel for pixel (at an output size below the crop's)."""
    from bench.dal_eval import style_truth
    from common import atomic_save_image, load_config
    from data.face_crops import build_face_tools, prepare_face
    from dda_amplify import DEFAULT_CONFIG
    from tests.conftest import SAMPLE_FACES

    photo = sorted(SAMPLE_FACES.glob("*.jpg"))[0]
    style = tmp_path / "style"
    for kind in ("source", "target"):
        (style / kind).mkdir(parents=True)
        shutil.copy(photo, style / kind / photo.name)
    amplified, size = tmp_path / "amplified", 128
    aligner, parser = build_face_tools(load_config(DEFAULT_CONFIG), size)
    with aligner, parser:
        face = prepare_face(photo, aligner, parser, size)
    for kind, image in (("source", face.source), ("target", face.source), ("mask", face.mask)):
        atomic_save_image(image, amplified / kind / f"{photo.stem}.png")
    record = {"input": photo.name, "name": photo.stem, "status": "ok", "matrix": face.matrix}
    (amplified / "manifest.jsonl").write_text(json.dumps(record) + "\n")
    names = style_truth(amplified, style, tmp_path / "truth", size)
    from data.io import read_rgb

    assert names == [photo.stem]
    truth = read_rgb(tmp_path / "truth" / "target" / f"{photo.stem}.png").astype(int)
    difference = np.abs(truth - read_rgb(amplified / "source" / f"{photo.stem}.png"))
    # the same pixels, up to the manifest's matrix being rounded to 6 decimals
    assert difference.mean() < 0.1 and np.percentile(difference, 99.9) <= 2, (difference.mean(), difference.max())

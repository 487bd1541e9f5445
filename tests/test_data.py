"""The paired dataset format and every bad-data case named in issue 2."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data.io import read_rgb
from data.paired import DatasetError, PairedDataset, scan_pairs, split_names


def test_scan_matches_by_name_and_loads(synthetic_pairs):
    result = scan_pairs(synthetic_pairs)
    assert len(result.pairs) == 6 and not result.skipped
    item = PairedDataset(result.pairs, size=32)[0]
    assert item["source"].shape == (3, 32, 32) and item["target"].shape == (3, 32, 32)
    assert item["mask"].shape == (32, 32) and set(item["mask"].unique().tolist()) <= {0, 1, 2, 3}
    assert item["source"].min() >= -1 and item["source"].max() <= 1
    assert bool(item["has_mask"])


def test_unmatched_and_corrupt_files_are_skipped_by_name(synthetic_pairs):
    (synthetic_pairs / "target" / "face000.png").unlink()
    Image.new("RGB", (8, 8)).save(synthetic_pairs / "target" / "orphan.png")
    (synthetic_pairs / "source" / "face001.png").write_bytes(b"not an image")
    data = (synthetic_pairs / "target" / "face002.png").read_bytes()
    (synthetic_pairs / "target" / "face002.png").write_bytes(data[: len(data) // 3])  # truncated
    result = scan_pairs(synthetic_pairs)
    assert [p.name for p in result.pairs] == ["face003", "face004", "face005"]
    text = "\n".join(result.skipped)
    for name in ("face000.png", "orphan.png", "face001.png", "face002.png"):
        assert name in text
    assert len(result.skipped) == 4


def test_corrupt_mask_keeps_pair_without_mask(synthetic_pairs):
    (synthetic_pairs / "mask" / "face003.png").write_bytes(b"garbage")
    result = scan_pairs(synthetic_pairs)
    pair = next(p for p in result.pairs if p.name == "face003")
    assert pair.mask is None and "face003.png" in result.warnings[0]
    assert not bool(PairedDataset([pair], 16)[0]["has_mask"])


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_odd_image_modes_become_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (10, 12), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / "x.png"
    image.save(path)
    array = read_rgb(path)
    assert array.shape == (10, 12, 3) and array.dtype == np.uint8
    if mode == "I;16":
        assert array.max() > 200  # scaled by the 16-bit range, not clipped to 255 everywhere
        assert array.min() < 50


def test_missing_or_empty_dataset_stops_clearly(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        scan_pairs(tmp_path / "nowhere")
    (tmp_path / "empty" / "source").mkdir(parents=True)
    with pytest.raises(DatasetError, match="target"):
        scan_pairs(tmp_path / "empty")
    (tmp_path / "empty" / "target").mkdir()
    with pytest.raises(DatasetError, match="no usable pairs"):
        scan_pairs(tmp_path / "empty")


def test_any_size_is_resized_and_masks_stay_labels(tmp_path):
    from tests.conftest import write_synthetic_pairs

    root = write_synthetic_pairs(tmp_path / "p", n=2, size=70)
    item = PairedDataset(scan_pairs(root).pairs, size=48)[0]
    assert item["source"].shape == (3, 48, 48)
    assert set(item["mask"].unique().tolist()) <= {0, 1, 2, 3}


def test_split_is_deterministic_and_disjoint():
    names = [f"n{i}" for i in range(50)]
    train, val = split_names(names, 0.1, seed=3)
    assert len(val) == 5 and not set(train) & set(val) and len(train) + len(val) == 50
    assert split_names(list(reversed(names)), 0.1, seed=3) == (train, val)
    assert split_names(names, 0.1, seed=4) != (train, val)


def test_joint_flip_keeps_pairs_aligned(tmp_path):
    """A lip box in the left third only: a flip that moved the images but not the mask (or the reverse)
    would leave the mask on unchanged pixels, and both orientations must turn up."""
    import torch
    from PIL import Image

    root = tmp_path / "pairs"
    for sub in ("source", "target", "mask"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    source = rng.integers(80, 180, (32, 32, 3)).astype(np.uint8)
    mask = np.full((32, 32), 3, np.uint8)
    mask[20:26, 2:11] = 2  # columns 2-10: its mirror (21-29) does not overlap it
    target = source.copy()
    target[mask == 2, 1] //= 2  # the lips darkened in green
    for name, array in (("source", source), ("target", target), ("mask", mask)):
        Image.fromarray(array).save(root / name / "face.png")

    dataset = PairedDataset(scan_pairs(root).pairs, size=32, hflip=True)
    torch.manual_seed(0)
    sides = set()
    for _ in range(12):
        item = dataset[0]
        lips = item["mask"] == 2
        changed = (item["target"] - item["source"]).abs().sum(0) > 0.05
        assert torch.equal(lips, changed)  # the mask is exactly where the target differs
        sides.add("left" if lips[:, :16].any() else "right")
    assert sides == {"left", "right"}


def test_joint_affine_moves_source_target_and_mask_together(tmp_path):
    """The lips of the target (darkened green) must stay exactly under the mask's lip label after a random
    shift/turn/zoom, the mask keeps its labels only, and the transform varies from sample to sample."""
    import torch
    from PIL import Image

    from data.paired import JointAffine

    root = tmp_path / "pairs"
    for sub in ("source", "target", "mask"):
        (root / sub).mkdir(parents=True)
    source = np.full((48, 48, 3), 150, np.uint8)
    mask = np.full((48, 48), 3, np.uint8)
    mask[28:36, 14:34] = 2
    target = source.copy()
    target[mask == 2, 1] = 40
    for name, array in (("source", source), ("target", target), ("mask", mask)):
        Image.fromarray(array).save(root / name / "face.png")

    affine = {"rotate_deg": 10.0, "scale": 0.1, "shift": 0.08}
    dataset = PairedDataset(scan_pairs(root).pairs, size=48, affine=affine)
    torch.manual_seed(0)
    centres = set()
    for _ in range(8):
        item = dataset[0]
        assert set(item["mask"].unique().tolist()) <= {0, 2, 3}
        lips = item["mask"] == 2
        dark = item["target"][1] < item["source"][1] - 0.5  # clearly inside the darkened lips
        assert dark.any() and lips[dark].float().mean() > 0.97  # the darkened pixels sit under the lip label
        assert torch.equal(item["source"][0], item["target"][0])  # only green was changed
        ys, xs = torch.nonzero(lips, as_tuple=True)
        centres.add((round(ys.float().mean().item()), round(xs.float().mean().item())))
    assert len(centres) > 3  # it moves

    plain = PairedDataset(scan_pairs(root).pairs, size=48, affine={"rotate_deg": 0.0, "scale": 0.0, "shift": 0.0})
    assert torch.equal(plain[0]["mask"], torch.from_numpy(mask).long())  # all zero: the identity
    with pytest.raises(ValueError, match="scale"):
        JointAffine(scale=1.5)


def test_colour_jitter_changes_only_the_picked_faces():
    """The decoder phase encodes the recoloured faces again: the mask must name exactly the changed ones."""
    import torch

    from data.face_batches import colour_jitter

    batch = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.4 - 0.2  # no clamping below
    out, picked = colour_jitter(batch, 0.5, torch.Generator().manual_seed(1), return_picked=True)
    assert 0 < int(picked.sum()) < 16
    assert torch.equal(out[~picked], batch[~picked])  # the rest bit for bit
    assert all(not torch.allclose(out[i], batch[i], atol=1e-3) for i in torch.nonzero(picked).flatten())
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # a hue/saturation change keeps the luma (unclamped)
    assert torch.allclose((out * luma).sum(1), (batch * luma).sum(1), atol=1e-4)
    plain, none = colour_jitter(batch, 0.0, torch.Generator(), return_picked=True)
    assert plain is batch and not none.any()
    same = colour_jitter(batch, 0.5, torch.Generator().manual_seed(1))  # without the mask: the same images
    assert torch.equal(same, out)

"""Region conditioning (model.region_conditioning) and calibrated transfer (dda_training.py calibrate=K), on the
tiny offline SD model: models/region_conditioning.py, models/dda.py, models/dda_io.py, models/fgmm.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from errors import CheckpointError, ConfigError
from tests.conftest import write_synthetic_pairs
from tests.test_dda import RES, cli_config, face_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(tiny_sd, conditioned: bool, seed: int = 0):
    from models.dda import DDA
    from models.sd_base import load_base_model

    torch.manual_seed(seed)
    dda = DDA(load_base_model(tiny_sd), prompt="a face with sks makeup", resolution=RES, lora_rank=4,
              lora_alpha=8.0, region_conditioning=conditioned)  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a LoRA with a visible effect (peft's init has lora_B = 0)
        for name, p in dda.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=generator)
    return dda.eval()


def generate(dda, seed=3):
    source, mask = face_batch(2)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(2)]
    return dda.img2img(source, mask, generator=generators)


def test_zero_initialised_conditioning_is_the_unconditioned_dda_bit_for_bit(tiny_sd):
    plain, conditioned = build(tiny_sd, False), build(tiny_sd, True)
    assert conditioned.region_conditioning is not None and not conditioned.region_conditioning.conv.weight.any()
    assert torch.equal(generate(plain), generate(conditioned))
    source, mask = face_batch(2)
    target = (source + 0.2).clamp(-1, 1)
    a = plain.training_forward(source, target, mask, generator=torch.Generator().manual_seed(0))
    b = conditioned.training_forward(source, target, mask, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a[k], b[k]) for k in ("noise_pred", "styled", "composite"))
    # the region weights are trained with the LoRA, in its optimizer group
    from models.dda_optim import build_optimizer, prepare_training

    prepare_training(conditioned)
    groups = conditioned.trainable_parameters()
    assert groups["region_conditioning"][0].requires_grad
    lora_group = build_optimizer(conditioned, 1e-3, 1e-2).param_groups[0]["params"]
    assert any(p is groups["region_conditioning"][0] for p in lora_group)


@pytest.mark.slow
def test_after_training_the_channels_are_used_and_the_base_run_ignores_them(tiny_sd, pairs5):
    """A few steps on the five pairs, then the same generation with the region weights zeroed: it changes."""
    from common import load_config, seed_everything
    from data.paired import PairedDataset, scan_pairs
    from dda_training import DEFAULT_CONFIG
    from losses.dda import DDALoss
    from models.dda_optim import build_optimizer, prepare_training, train_step

    cfg = load_config(DEFAULT_CONFIG, cli_config(tiny_sd, pairs5, "unused"))
    seed_everything(0)
    dda = prepare_training(build(tiny_sd, True))
    optimizer = build_optimizer(dda, 1e-2, 1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    dataset = PairedDataset(scan_pairs(pairs5).pairs, size=RES, hflip=False, cache=True)
    batch = {k: torch.stack([dataset[i][k] for i in range(5)]) for k in ("source", "target", "mask", "has_mask")}
    dda.train()
    for _ in range(4):
        train_step(dda, batch, DDALoss.from_config(cfg), optimizer, scaler, 1.0, False)
    dda.eval()
    assert dda.region_conditioning.conv.weight.abs().sum() > 0
    with_maps = generate(dda)
    # The base run (S') sees no region maps: the same with the channels zeroed.
    source, mask = face_batch(2)
    z = dda.encode(source)
    t, text = torch.tensor([201]), dda.encode_prompt().expand(2, -1, -1)
    regions = dda.region_maps(mask, z.shape[-2:])
    base = dda.predict_noise(z, t, text, use_lora=False, regions=regions)
    with torch.no_grad():
        saved = dda.region_conditioning.conv.weight.clone()
        dda.region_conditioning.conv.weight.zero_()
        assert torch.equal(base, dda.predict_noise(z, t, text, use_lora=False, regions=regions))
        without = generate(dda)
        dda.region_conditioning.conv.weight.copy_(saved)
    assert (with_maps - without).abs().max() > 1e-3


def test_widened_conv_in_gives_the_same_features(tiny_sd):
    from models.region_conditioning import region_maps, widened_conv_in

    dda = build(tiny_sd, True)
    with torch.no_grad():
        dda.region_conditioning.conv.weight.normal_(0, 0.1)
    source, mask = face_batch(2)
    z = dda.encode(source)
    maps = region_maps(mask, z.shape[-2:])
    assert maps.shape == (2, 3, *z.shape[-2:]) and torch.allclose(maps.sum(1).max(), torch.tensor(1.0))
    conv_in = dda.unet.conv_in
    with dda.region_conditioning.given(maps):
        hooked = conv_in(z)
    wide = widened_conv_in(conv_in, dda.region_conditioning)
    assert wide.in_channels == 4 + 3
    assert torch.allclose(hooked, wide(torch.cat([z, maps], 1)), atol=1e-5)


@pytest.mark.slow
def test_conditioned_dda_saves_and_loads_both_ways_and_old_checkpoints_load(tiny_sd, tmp_path):
    from common import load_checkpoint, save_checkpoint
    from models.dda_io import REGION_WEIGHTS_NAME, load_dda, save_lora

    dda = build(tiny_sd, True)
    with torch.no_grad():
        dda.region_conditioning.conv.weight.normal_(0, 0.2)
    save_checkpoint({"dda": dda.state()}, tmp_path / "dda_final.pt")
    reference = generate(dda)
    assert torch.equal(load_dda(tmp_path / "dda_final.pt").img2img(*face_batch(2), generator=[
        torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)]), reference)  # fmt: skip
    folder = tmp_path / "lora"
    save_lora(dda, folder)
    assert (folder / REGION_WEIGHTS_NAME).is_file()
    assert json.loads((folder / "dda_modules.json").read_text())["region_conditioning"] is True
    assert torch.equal(generate(load_dda(folder)), reference)

    # A checkpoint written before region conditioning existed (no key in its settings, no weights) loads
    # unconditioned and generates exactly as the unconditioned DDA does.
    plain = build(tiny_sd, False)
    old = plain.state()
    del old["settings"]["region_conditioning"]
    save_checkpoint({"dda": old}, tmp_path / "old.pt")
    loaded = load_dda(tmp_path / "old.pt")
    assert loaded.region_conditioning is None
    assert torch.equal(generate(loaded), generate(plain))

    # Weights that do not fit this base model's conv_in: a message naming both.
    bad = load_checkpoint(tmp_path / "dda_final.pt")
    bad["dda"]["region_conditioning"]["conv.weight"] = torch.zeros(16, 3, 3, 3)
    save_checkpoint(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt.*16 output channels.*conv_in with 32"):
        load_dda(tmp_path / "bad.pt")


def test_amplify_loads_a_conditioned_dda_and_feeds_each_face_its_parse(tiny_sd, tmp_path, monkeypatch):
    """dda_amplify.generate hands each face's own mask to the DDA: conditioned by its own regions."""
    from omegaconf import OmegaConf

    import dda_amplify
    from common import save_checkpoint

    dda = build(tiny_sd, True)
    with torch.no_grad():
        dda.region_conditioning.conv.weight.normal_(0, 0.2)
    save_checkpoint({"dda": dda.state()}, tmp_path / "dda_final.pt")
    cfg = OmegaConf.create(
        {
            "checkpoint": str(tmp_path / "dda_final.pt"),
            "amplifier": None,
            "styles": None,
            "strength": None,
            "num_steps": None,
            "scheduler": None,
            "guidance_scale": 1.0,
            "region_weights": {"eyes": None, "lips": None, "skin": None},
            "model": {"dtype": "float32", "pretrained": None, "fuse_lora": False},
            "resolution": None,
        }
    )  # fmt: skip  (unfused: bit for bit as the DDA itself; fused agrees to rounding, test_dda_path.py)
    models, resolution = dda_amplify.build_models(cfg, torch.device("cpu"))
    loaded = models[cfg.checkpoint].dda  # a checkpoint from before the draft: the DDA alone
    assert resolution == RES and loaded.region_conditioning is not None and cfg.amplifier == "dda"
    dda_amplify.resolve_sampling(cfg, loaded)
    source, mask = face_batch(2)
    seen = []
    original = loaded.region_maps
    monkeypatch.setattr(loaded, "region_maps", lambda m, hw: seen.append(m.clone()) or original(m, hw))
    out = dda_amplify.generate(models, cfg, source, mask, [3, 4])
    assert torch.equal(seen[0].cpu(), mask)
    assert torch.equal(out, generate(dda))


def test_region_gains_recover_two_from_a_change_half_the_target():
    from models.fgmm import fit_region_gains

    _, mask = face_batch(2)
    target_change = torch.randn(2, 3, RES, RES)
    gains = fit_region_gains(0.5 * target_change, target_change, mask)
    assert gains == {region: pytest.approx(2.0) for region in ("eyes", "lips", "skin", "cheeks")}
    gains = fit_region_gains(0.5 * target_change + 0.01 * torch.randn(2, 3, RES, RES), target_change, mask)
    assert all(g == pytest.approx(2.0, rel=0.02) for g in gains.values())
    # a region with no change to scale has no gain
    assert fit_region_gains(torch.zeros(2, 3, RES, RES), target_change, mask)["lips"] is None


class HalfTheChange:
    """A fold's DDA stand-in: it makes up each of its dataset's faces with exactly half the target's change, that
    change's colour turned by `turn` (3x3, RGB as row vectors; None: not turned); FGMM's colour matrices on top."""

    def __init__(self, dataset, turn: torch.Tensor | None = None):
        from models.fgmm import FGMM

        self.targets = {float(dataset[i]["source"].sum()): dataset[i]["target"] for i in range(len(dataset))}
        self.turn, self.fgmm = turn, FGMM()

    def makeup_signal(self, source, mask, generator=None):
        change = 0.5 * (self.targets[float(source[0].sum())][None] - source)
        if self.turn is not None:
            change = torch.einsum("bchw,cd->bdhw", change, self.turn)
        return source + self.fgmm.recolour(change, mask)

    def img2img(self, source, mask, generator=None):
        return self.makeup_signal(source, mask, generator)


def stand_in_folds(monkeypatch, turn: torch.Tensor | None = None) -> list[int]:
    """dda_training.train_fold replaced by HalfTheChange on the fold's pairs; returns the held-out indices, as run."""
    import dda_training
    from data.paired import PairedDataset

    trained = []

    def stand_in_fold(cfg, pairs, held_out, fold_dir):
        trained.append(held_out)
        return HalfTheChange(PairedDataset(pairs, size=RES, hflip=False, cache=True), turn)

    monkeypatch.setattr(dda_training, "train_fold", stand_in_fold)
    return trained


def mean_fold_gains(calibration: dict) -> dict[str, float]:
    """Per region, the folds' gains averaged as calibrate() should (regions without a gain: 1, the weight kept)."""
    means = {}
    for region in calibration["learned_fgmm"]:
        values = [fold["gains"][region] for fold in calibration["folds"] if fold["gains"][region] is not None]
        means[region] = float(np.mean(values)) if values else 1.0
    return means


@pytest.mark.slow
def test_calibration_on_a_stand_in_that_makes_half_the_change_in_another_colour(tiny_sd, tmp_path, monkeypatch):
    """calibrate=2 on the real stage script, with every fold's DDA replaced by a stand-in whose change is exactly
    half the target's, its colour turned 25 degrees about the grey axis: each fold fits the colour matrix that turns
    it back on its own four pairs (fgmm.colour), the gain on its held-out pair is then 2 along it, and the stored
    FGMM weights become the learned ones x the mean gains; the folds ran."""
    import dda_training
    from models.dda_io import load_dda

    angle = np.radians(25.0)
    axis = torch.ones(3) / np.sqrt(3.0)
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    turn = np.cos(angle) * torch.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * torch.outer(axis, axis)
    trained = stand_in_folds(monkeypatch, turn)
    # pairs whose eyes and lips change in every colour direction (pairs5's change only along one or two)
    root = write_synthetic_pairs(tmp_path / "pairs", n=5, size=RES)
    rng = np.random.default_rng(0)
    for path in sorted((root / "source").glob("*.png")):
        source = np.asarray(Image.open(path)).astype(np.int16)
        mask = np.asarray(Image.open(root / "mask" / path.name))
        field = rng.integers(-40, 41, size=(4, 4, 3)).astype(np.float32)
        field = np.stack([np.asarray(Image.fromarray(c).resize((RES, RES), Image.Resampling.BILINEAR)) for c in field.transpose(2, 0, 1)], -1)  # fmt: skip
        target = np.where(np.isin(mask, (1, 2))[..., None], source + field, source).clip(0, 255).astype(np.uint8)
        Image.fromarray(target).save(root / "target" / path.name)
    out = tmp_path / "dda"
    summary = dda_training.main(cli_config(tiny_sd, root, out, "train.epochs=1", "calibrate=2", "data.hflip=false"))
    assert trained == [0, 1]
    calibration = summary["calibration"]
    for fold in calibration["folds"]:
        for region in ("eyes", "lips"):  # pairs5 changes eyes and lips; skin is unchanged (no colour, gain ~0)
            turned_back = fold["gains"][region] * torch.tensor(fold["colour"][region])
            assert torch.allclose(turned_back, 2 * turn.T, atol=2e-3), region
        assert "cheeks" not in fold["colour"]
    # The stored weights follow the folds' own gains: about 2 (2 cos 25deg to 2, as much of the change lies along
    # the grey axis), not the learned ones left as they were.
    means = mean_fold_gains(calibration)
    assert calibration["mean_gains"] == pytest.approx(means)
    for region in ("eyes", "lips"):
        assert 2 * np.cos(angle) - 0.01 < means[region] < 2.01, (region, means[region])
        expected = calibration["learned_fgmm"][region] * means[region]
        assert calibration["calibrated_fgmm"][region] == pytest.approx(min(expected, 4.0), rel=1e-5)
        assert calibration["calibrated_fgmm"][region] > 1.5 * calibration["learned_fgmm"][region], region
    loaded = load_dda(out / "dda_final.pt")
    assert loaded.fgmm.weights() == pytest.approx(calibration["calibrated_fgmm"])
    assert summary["fgmm_weights"] == pytest.approx(calibration["calibrated_fgmm"])
    assert summary["fgmm_colour"] == loaded.fgmm.colours()  # the full DDA's own fit, saved with it


def test_calibration_without_colour_and_a_bad_colour_region(tiny_sd, pairs5, tmp_path, monkeypatch):
    """fgmm.colour=[] with calibrate=2, the folds' DDAs stand-ins that make exactly half the target's change: no
    colour matrix anywhere, each fold's gain 2 on the eyes and lips (which pairs5 changes), none on the unchanged
    skin; the calibrated weights are the learned ones x 2 there and the learned ones on the skin and cheeks."""
    import dda_training
    from models.dda_io import load_dda

    with pytest.raises(ConfigError, match=r"'fgmm.colour'.*nose"):
        dda_training.main(cli_config(tiny_sd, pairs5, tmp_path / "o", "train.epochs=1", "fgmm.colour=[lips,nose]"))
    trained = stand_in_folds(monkeypatch)
    out = tmp_path / "off"
    summary = dda_training.main(
        cli_config(tiny_sd, pairs5, out, "train.epochs=1", "data.num_pairs=3", "fgmm.colour=[]", "calibrate=2",
                   "data.hflip=false")
    )  # fmt: skip
    assert trained == [0, 1] and summary["fgmm_colour"] is None
    calibration = summary["calibration"]
    learned, calibrated = calibration["learned_fgmm"], calibration["calibrated_fgmm"]
    for fold in calibration["folds"]:
        assert fold["colour"] == {}
        assert fold["gains"]["eyes"] == pytest.approx(2.0, rel=1e-4)
        assert fold["gains"]["lips"] == pytest.approx(2.0, rel=1e-4)
        assert fold["gains"]["skin"] is None and fold["gains"]["cheeks"] is None
    assert calibration["mean_gains"] == pytest.approx(mean_fold_gains(calibration))
    for region in ("eyes", "lips"):
        assert calibrated[region] == pytest.approx(min(2 * learned[region], 4.0), rel=1e-4), region
    assert calibrated["skin"] == pytest.approx(learned["skin"]) and calibrated["cheeks"] == pytest.approx(
        learned["cheeks"]
    )
    assert load_dda(out / "dda_final.pt").fgmm.weights() == pytest.approx(calibrated)
    assert summary["fgmm_weights"] == pytest.approx(calibrated)


def test_calibrate_needs_more_pairs_than_folds(tiny_sd, tmp_path):
    import dda_training

    root = write_synthetic_pairs(tmp_path / "pairs", n=3, size=RES)
    with pytest.raises(ConfigError, match=r"'calibrate'.*3 fold\(s\) need at least 4 seed pairs, but there are 3"):
        dda_training.main(cli_config(tiny_sd, root, tmp_path / "o", "train.epochs=1", "calibrate=3"))


@pytest.mark.slow
def test_calibration_folds_really_train_and_resume(tiny_sd, pairs5, tmp_path):
    """calibrate=1 for real (tiny model, 1 epoch): the fold trains on the four other pairs in its own folder;
    run again, the finished fold is loaded, not trained again."""
    import dda_training

    out = tmp_path / "dda"
    args = cli_config(tiny_sd, pairs5, out, "train.epochs=1", "calibrate=1", "train.sample_every=100")
    first = dda_training.main(args)
    fold = out / "calibration" / "fold_0"
    assert (fold / "dda_final.pt").is_file()
    assert json.loads((fold / "summary.json").read_text())["num_pairs"] == 4
    assert sorted(p.stem for p in (fold / "pairs" / "source").iterdir()) == first["pairs"][1:]
    stamp = (fold / "dda_final.pt").stat().st_mtime_ns
    second = dda_training.main(["--resume", str(out / "dda_checkpoint_epoch_1.pt"), *args])
    assert (fold / "dda_final.pt").stat().st_mtime_ns == stamp
    assert second["calibration"]["calibrated_fgmm"] == pytest.approx(first["calibration"]["calibrated_fgmm"])

"""pretrain_prior.py: a smoke run on the sample faces, time slices that resume, bad inputs, the folder it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from errors import MakeupError
from tests.conftest import SAMPLE_FACES

pytestmark = pytest.mark.slow  # trains a model, runs the stages or drives a browser

SMALL = [
    "data.resolution=32",
    "data.eval_count=2",
    "vae.block_out_channels=[32,32]",
    "vae.steps=3",
    "vae.warm_steps=1",
    "vae.warm_size=16",
    "vae.batch_size=2",
    "vae.warm_batch_size=2",
    "unet.block_out_channels=[32,64]",
    "unet.down_block_types=[DownBlock2D,CrossAttnDownBlock2D]",
    "unet.up_block_types=[CrossAttnUpBlock2D,UpBlock2D]",
    "unet.steps=3",
    "unet.batch_size=2",
    "unet.warmup_steps=1",
    "checkpoint_every=1",
    "sample_every=2",
]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Six sample faces plus a file that is not an image and a picture without a face."""
    folder = tmp_path_factory.mktemp("prior_faces")
    for path in sorted(SAMPLE_FACES.glob("*.jpg"))[:6]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.jpg").write_text("not an image\n")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "grey.png")
    return folder


def run(faces, out, *extra):
    import pretrain_prior

    return pretrain_prior.main(
        [f"output_dir={out}", f"data.train_dirs=[{faces}]", f"data.eval_dir={SAMPLE_FACES}", *SMALL, *extra]
    )


def test_time_slices_resume_and_the_folder_loads_as_sd(faces, tmp_path):
    from models.sd_base import load_base_model

    out = tmp_path / "prior"
    first = run(faces, out, "stop_after=0.0001")  # stops at the first checkpoint
    assert first == {"finished": False, "phase": "vae", "step": 1}
    assert not (out / "model").exists()
    summary = run(faces, out, f"ship_dir={tmp_path / 'shipped'}")
    assert summary["finished"] and summary["phase"] == "done" and summary["steps"] == {"vae": 3, "unet": 3}
    log = (out / "train.log").read_text()
    assert "resumed from" in log and "phase vae, step 1" in log
    # bad inputs are skipped and named, the run went on
    assert set(summary["skipped"]) == {f"{faces.name}/notes.jpg", f"{faces.name}/grey.png"}
    assert "unreadable" in summary["skipped"][f"{faces.name}/notes.jpg"]
    assert summary["skipped"][f"{faces.name}/grey.png"] == "no face found"
    assert summary["faces"]["train"] == 6
    assert summary["scaling_factor"] > 0 and "vae_psnr_db" in summary["figures"]
    for folder in (out / "model", tmp_path / "shipped"):  # the real SD 1.5 code path loads both
        base = load_base_model(folder)
        assert base["vae"].config.scaling_factor == pytest.approx(summary["scaling_factor"])
        assert base["noise_scheduler"].config.get("set_alpha_to_one") is False  # SD 1.5's scheduler config
    shipped = tmp_path / "shipped"
    assert "non-commercial research" in (shipped / "README.md").read_text()
    from safetensors import safe_open

    with safe_open(str(shipped / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert str(f.get_tensor(next(iter(f.keys()))).dtype) == "torch.float16"
    assert json.loads((out / "summary.json").read_text())["finished"] is True
    assert list(out.glob("samples_vae_*.png")) and list(out.glob("samples_img2img_*.png"))
    assert (out / "latents_unet_hflip.pt").is_file()


def test_no_face_anywhere_names_the_key(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(empty / "grey.png")
    with pytest.raises(MakeupError, match="data.train_dirs"):
        run(empty, tmp_path / "out")


@pytest.fixture(scope="module")
def shipped_base(faces, tmp_path_factory):
    """A finished small prior in the shipped (fp16) layout, for the init_from runs."""
    folder = tmp_path_factory.mktemp("prior_base")
    run(faces, folder / "run", f"ship_dir={folder / 'shipped'}")
    return folder / "shipped"


def test_decoder_phase_from_a_shipped_prior_keeps_its_latent_space(faces, shipped_base, tmp_path):
    """init_from + decoder.steps: only the decoder moves; the encoder (so every latent) and the UNet stay."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    base = shipped_base
    out, shipped = tmp_path / "decoder", tmp_path / "decoder_shipped"
    extra = ["decoder.steps=2", "decoder.batch_size=2", "decoder.warmup_steps=1", "decoder.lr=1e-2"]
    extra += ["decoder.colour_jitter=1.0"]  # every face recoloured: encoded on the fly by the frozen encoder
    first = run(faces, out, f"init_from={base}", "stop_after=0.0001", *extra)  # a slice: one decoder step
    assert first == {"finished": False, "phase": "decoder", "step": 1}
    summary = run(faces, out, f"init_from={base}", f"ship_dir={shipped}", *extra)
    assert "latents of 6 faces read from" in (out / "train.log").read_text()  # the slice's encoding was kept
    assert summary["finished"] and summary["steps"] == {"decoder": 2} and summary["init_from"] == str(base)
    before, after = (AutoencoderKL.from_pretrained(f, subfolder="vae") for f in (base, shipped))
    assert after.config.scaling_factor == before.config.scaling_factor
    for name, value in before.encoder.state_dict().items():
        assert torch.equal(value, after.encoder.state_dict()[name]), name
    changed = [n for n, v in before.decoder.state_dict().items() if not torch.equal(v, after.decoder.state_dict()[n])]
    assert changed  # the decoder trained
    unet_before, unet_after = (UNet2DConditionModel.from_pretrained(f, subfolder="unet") for f in (base, shipped))
    for name, value in unet_before.state_dict().items():
        assert torch.equal(value, unet_after.state_dict()[name]), name
    card = (shipped / "README.md").read_text()
    assert "decoder alone" in card and f"VAE and UNet from `{base}`" in card
    assert list(out.glob("samples_decoder_*.png"))
    assert summary["figures"]["img2img_psnr_db"] > 0 and list(out.glob("samples_img2img_decoder_*.png"))


def test_unet_phase_from_a_shipped_prior_at_a_new_resolution(faces, shipped_base, tmp_path):
    """init_phase=unet: the folder's VAE is kept bit for bit, its UNet is fine-tuned at data.resolution (here 2x)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    out, shipped = tmp_path / "unet", tmp_path / "unet_shipped"
    extra = [f"init_from={shipped_base}", "init_phase=unet", "data.resolution=64", "data.train_count=4"]
    summary = run(faces, out, f"ship_dir={shipped}", *extra)
    assert summary["finished"] and summary["steps"] == {"unet": 3} and summary["faces"]["train"] == 4
    assert summary["resolution"] == 64 and summary["figures"]["vae_psnr_db"] > 0  # the VAE measured at 64 px
    assert summary["figures"]["img2img_psnr_db"] > 0 and (out / "samples_vae_init.png").is_file()
    before, after = (AutoencoderKL.from_pretrained(f, subfolder="vae") for f in (shipped_base, shipped))
    assert after.config.scaling_factor == before.config.scaling_factor
    for name, value in before.state_dict().items():
        assert torch.equal(value, after.state_dict()[name]), name
    unet_before, unet_after = (
        UNet2DConditionModel.from_pretrained(f, subfolder="unet") for f in (shipped_base, shipped)
    )
    assert unet_after.config.sample_size == 2 * unet_before.config.sample_size  # pipelines default to 64 px now
    assert any(not torch.equal(v, unet_after.state_dict()[n]) for n, v in unet_before.state_dict().items())
    card = (shipped / "README.md").read_text()
    assert f"VAE and UNet from `{shipped_base}`" in card and "UNet fine-tuned on it at 64 px for 3 steps" in card
    assert f"as measured for `{shipped_base}`'s VAE" in card  # the factor is the folder's, not measured here
    with pytest.raises(MakeupError, match="init_phase"):
        run(faces, tmp_path / "bad", f"init_from={shipped_base}", "init_phase=vae")


def test_init_from_needs_decoder_steps_and_an_sd_folder(faces, tmp_path):
    with pytest.raises(MakeupError, match="init_from"):
        run(faces, tmp_path / "a", f"init_from={tmp_path}", "decoder.steps=2")  # not a diffusers folder

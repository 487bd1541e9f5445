"""Training and sampling agree: the DDIM path, the trained sampling settings, scalar ranges, resume, sizes."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.test_dda import RES, cli_config, face_batch, make_dda

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sd15_noise_scheduler():
    """SD 1.5's own scheduler folder (PNDM, set_alpha_to_one false) read the way load_base_model reads it."""
    from diffusers import DDPMScheduler

    from models.tiny_sd import sd15_scheduler

    return DDPMScheduler.from_config(sd15_scheduler().config)


def path_unet(eps_path: torch.Tensor):
    """A stand-in for the UNet that predicts the path noise: what a perfectly trained LoRA UNet would."""

    def forward(noisy, t, text, use_lora=True):
        return eps_path

    return forward


def ddim_driven_by(dda, eps_path: torch.Tensor, z_source: torch.Tensor) -> torch.Tensor:
    """The DDA's own image-to-image DDIM loop (noise from seed 7) with `path_unet(eps_path)` as the UNet."""
    dda.rdm.forward = path_unet(eps_path)
    return dda._denoise(
        z_source,
        None,
        use_lora=True,
        strength=dda.strength,
        num_steps=dda.num_steps,
        scheduler="ddim",
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(7),
    )


@pytest.mark.parametrize("config", ["tiny (set_alpha_to_one default)", "sd15 (set_alpha_to_one false)"])
def test_ddim_from_noised_source_lands_on_target(tiny_sd, config):
    from diffusers.utils.torch_utils import randn_tensor

    from models.dda import ddim_path, make_inference_scheduler, visited_timesteps

    dda = make_dda(tiny_sd)
    if config.startswith("sd15"):
        dda.noise_scheduler = _sd15_noise_scheduler()
        assert dda.final_alpha() < 1.0  # SD 1.5: DDIM's last step does not reach alpha 1
    else:
        assert dda.final_alpha() == 1.0
    g = torch.Generator().manual_seed(0)
    z_source, z_target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    noise = randn_tensor(z_source.shape, generator=torch.Generator().manual_seed(7))
    sched = make_inference_scheduler(dda.noise_scheduler, "ddim")
    visited = visited_timesteps(sched, dda.strength, dda.num_steps)
    a = dda.noise_scheduler.alphas_cumprod
    a_start = float(a[visited[0]])
    x0, eps = ddim_path(z_source, z_target, noise, a_start, dda.final_alpha())
    # the path starts at the noised source that sampling starts from ...
    start = a_start**0.5 * x0 + (1 - a_start) ** 0.5 * eps
    torch.testing.assert_close(start, sched.add_noise(z_source, noise, visited[:1]), atol=1e-5, rtol=1e-5)
    # ... and DDIM driven by the path noise ends exactly on the target latent
    torch.testing.assert_close(ddim_driven_by(dda, eps, z_source), z_target, atol=1e-4, rtol=1e-4)
    if config.startswith("sd15"):  # the old path (which assumed alpha 1 at the end) misses it here
        _, eps_old = ddim_path(z_source, z_target, noise, a_start, 1.0)
        missed = ddim_driven_by(dda, eps_old, z_source)
        assert (missed - z_target).abs().max() > 1e-2


def test_training_forward_decodes_where_sampling_ends(tiny_sd):
    """The pixel losses see the latent DDIM would return, not the raw x0 prediction (they differ for SD 1.5)."""
    dda = make_dda(tiny_sd)
    dda.noise_scheduler = _sd15_noise_scheduler()
    source, mask = face_batch(2)
    target = (source + 0.2).clamp(-1, 1)
    decoded = []
    original = dda.decode
    dda.decode = lambda z: decoded.append(z.detach().clone()) or original(z)
    out = dda.training_forward(source, target, mask, generator=torch.Generator().manual_seed(0))
    assert out["noise_pred"].shape == out["noise_target"].shape
    assert len(decoded) == 2  # the LoRA run's end and the base run's end
    assert torch.isfinite(out["composite"]).all()


def test_sampling_defaults_to_trained_settings_and_warns_on_override(tiny_sd, caplog):
    from models.dda import DDA
    from models.sd_base import load_base_model

    torch.manual_seed(0)
    dda = DDA(load_base_model(tiny_sd), prompt="sks", resolution=RES, lora_rank=4, strength=0.5, num_steps=4)
    with torch.no_grad():
        for name, p in dda.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    dda.eval()
    source, mask = face_batch(1)
    default = dda.img2img(source, mask, generator=torch.Generator().manual_seed(3))
    explicit = dda.img2img(source, mask, strength=0.5, num_steps=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(default, explicit)
    logger = logging.getLogger("makeup")
    logger.addHandler(caplog.handler)
    try:
        other = dda.img2img(source, mask, strength=0.3, num_steps=10, generator=torch.Generator().manual_seed(3))
    finally:
        logger.removeHandler(caplog.handler)
    assert not torch.equal(other, default)
    assert "trained with strength=0.5" in caplog.text and "trained with num_steps=4" in caplog.text
    assert dda.settings()["scheduler"] == "ddim"


def test_scalars_stay_in_range(tiny_sd):
    dda = make_dda(tiny_sd)
    with torch.no_grad():
        dda.rdm.alpha.fill_(1.7)
        dda.fgmm.region_weights.copy_(torch.tensor([-0.3, 0.5, 2.5, 1.25]))
    dda.clamp_scalars()
    assert float(dda.rdm.alpha) == 1.0
    assert dda.fgmm.region_weights.tolist() == [0.0, 0.5, 2.0, 1.25]


def test_other_size_is_made_up_at_training_resolution(tiny_sd):
    """A 2x source: made up at RES, the change resized back; background stays the source exactly."""
    dda = make_dda(tiny_sd)
    source, mask = face_batch(2)
    big = torch.nn.functional.interpolate(source, scale_factor=2, mode="bilinear", align_corners=False)
    big_mask = torch.nn.functional.interpolate(mask[:, None].float(), scale_factor=2, mode="nearest")[:, 0].long()
    out = dda.img2img(big, big_mask, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert out.shape == big.shape
    background = (big_mask == 0).unsqueeze(1).expand_as(big)
    assert torch.equal(out[background], big[background])
    small = dda.img2img(source, mask, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    change_small = small - source
    change_big = torch.nn.functional.interpolate(out - big, size=(RES, RES), mode="area")
    inside = (mask == 2).unsqueeze(1).expand_as(source)
    # the same makeup (up to resampling at the region's edges) on the lips
    assert torch.corrcoef(torch.stack([change_small[inside], change_big[inside]]))[0, 1] > 0.8


@pytest.mark.slow
def test_resume_restores_checkpoint_config_and_conv_lora(tiny_sd, pairs5, tmp_path):
    """--resume without --config continues with the checkpoint's config; keys given again still apply."""
    import dda_training
    from common import load_checkpoint
    from models.dda_io import load_dda

    out = tmp_path / "run"
    targets = "lora.target_modules=[to_q,to_v,conv1,conv2]"
    dda_training.main(cli_config(tiny_sd, pairs5, out, "train.epochs=1", "train.checkpoint_every=1", targets))
    # --resume may come after key=value overrides too (bench/dal_eval.py appends its --dda string to its own keys)
    summary = dda_training.main(["train.epochs=2", "--resume", str(out / "dda_checkpoint_epoch_1.pt")])
    assert summary["epochs_this_run"] == 1 and summary["resolution"] == RES
    ckpt = load_checkpoint(out / "dda_final.pt")
    assert ckpt["config"]["lora"]["rank"] == 4 and ckpt["config"]["diffusion"]["num_steps"] == 4
    assert ckpt["config"]["lora"]["target_modules"] == ["to_q", "to_v", "conv1", "conv2"]
    assert any("conv1" in k for k in ckpt["dda"]["lora"])
    dda = load_dda(out / "dda_final.pt")
    assert (dda.strength, dda.num_steps) == (0.5, 4)
    assert sorted(dda.lora_targets) == ["conv1", "conv2", "to_q", "to_v"]


def test_lora_dropout_acts_in_training_only(tiny_sd):
    """lora.dropout reaches peft's LoRA layers: the LoRA branch is random in train mode, fixed in eval mode."""
    from common import load_config
    from dda_training import DEFAULT_CONFIG
    from models.dda_io import build_dda

    cfg = load_config(DEFAULT_CONFIG, [f"model.pretrained={tiny_sd}", f"train.resolution={RES}", "lora.dropout=0.5"])
    dda = build_dda(cfg)
    drops = [m for n, m in dda.unet.named_modules() if n.endswith("lora_dropout.default")]
    assert drops and all(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in drops)
    for name, param in dda.unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # B starts at zero: give the LoRA branch an output
    latent = torch.randn(1, 4, RES // 8, RES // 8, generator=torch.Generator().manual_seed(0))
    text = dda.encode_prompt()
    t = torch.tensor([100])
    dda.train()
    with torch.no_grad():
        a, b = (dda.unet(latent, t, text).sample for _ in range(2))
    assert not torch.equal(a, b)
    dda.eval()
    with torch.no_grad():
        c, d = (dda.unet(latent, t, text).sample for _ in range(2))
    assert torch.equal(c, d)


@pytest.mark.parametrize("conditioned", [False, True])
def test_fused_lora_samples_as_the_unfused_dda(tiny_sd, conditioned):
    """fuse_lora (stage 3's default): plain UNet copies with the LoRA merged (styled run) and without it (base
    run) give the unfused DDA's output to float rounding; the DDA's saved state is unchanged; it cannot train."""
    from models.dda import DDA
    from models.sd_base import load_base_model

    torch.manual_seed(0)
    base = load_base_model(tiny_sd)
    dda = DDA(base, prompt="a face", resolution=RES, lora_rank=4, lora_alpha=8.0, region_conditioning=conditioned)
    dda.set_trainable()
    with torch.no_grad():
        for name, p in dda.named_parameters():
            if "lora_B" in name or "region_conditioning" in name:
                p.normal_(0, 0.5)
    dda.eval()
    source, mask = face_batch(2)

    def sample():
        return dda.img2img(source, mask, generator=[torch.Generator().manual_seed(i) for i in range(2)])

    unfused, state = sample(), dda.state()
    base_only = dda.img2img(source, mask, region_weights={"eyes": 0, "lips": 0, "skin": 0})
    dda.fuse_lora()
    fused = sample()
    # the random tiny UNet amplifies rounding (the shipped prior's DDA: 3e-6); a wrong merge is off by the LoRA's effect
    assert (unfused - base_only).abs().max() > 0.1
    assert torch.allclose(fused, unfused, atol=3e-3)
    after = dda.state()
    assert after["lora"].keys() == state["lora"].keys()
    assert all(torch.equal(after["lora"][k], state["lora"][k]) for k in state["lora"])
    with pytest.raises(RuntimeError, match="fuse_lora"):
        dda.training_forward(source, source, mask)

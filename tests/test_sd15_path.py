"""The real-size path without a GPU: the SD-1.5-shaped model (models/sd15_shaped.py), the meta-device accounting
(bench/meta_accounting.py) against a measured CPU step, the V100 prediction, gradient checkpointing, bad input."""

from __future__ import annotations

import json
from collections import namedtuple

import pytest
import torch

from common import load_config
from errors import MakeupError
from tests.conftest import REPO
from tests.test_dda import face_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# SD 1.5's published parameter counts (stable-diffusion-v1-5: UNet, VAE, CLIP ViT-L/14 text encoder).
SD15_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def dda_cfg(*overrides: str):
    return load_config(REPO / "configs" / "dda.yaml", ["wandb.mode=disabled", *overrides])


@pytest.mark.slow
def test_sd15_shaped_has_sd15s_parts_and_an_offline_tokenizer(tmp_path):
    from models import sd15_shaped

    parts = {
        "unet": sd15_shaped.build_unet("meta"),
        "vae": sd15_shaped.build_vae("meta"),
        "text_encoder": sd15_shaped.build_text_encoder("meta"),
    }
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    assert counts == SD15_PARAMETERS
    assert parts["vae"].config.scaling_factor == 0.18215 and parts["vae"].config.force_upcast
    tokenizer = sd15_shaped.build_tokenizer(tmp_path / "tokenizer")
    assert len(tokenizer) == 49408 == parts["text_encoder"].config.vocab_size
    ids = tokenizer("a photo of a face with sks makeup", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407  # SD 1.5's start and end/padding ids
    assert max(ids) < 49408 and not (tmp_path / "tokenizer").exists()  # the vocabulary files are cleaned up


@pytest.mark.slow
def test_sd15_shaped_folder_loads_as_an_sd15_folder(tmp_path, monkeypatch):
    """The writer, with the UNet, VAE and text encoder narrowed (the real one is 4 GB): written atomically,
    read by load_base_model as any SD 1.5 folder (SD 1.5's scheduler, the 49,408-entry tokenizer)."""
    from models import sd15_shaped
    from models.sd_base import load_base_model

    narrow = {"block_out_channels": [32, 32, 64, 64], "cross_attention_dim": 32, "norm_num_groups": 8}
    monkeypatch.setattr(sd15_shaped, "UNET_CONFIG", {**sd15_shaped.UNET_CONFIG, **narrow, "layers_per_block": 1})
    vae = {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 8, "layers_per_block": 1}
    monkeypatch.setattr(sd15_shaped, "VAE_CONFIG", {**sd15_shaped.VAE_CONFIG, **vae})
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    monkeypatch.setattr(sd15_shaped, "TEXT_ENCODER_CONFIG", {**sd15_shaped.TEXT_ENCODER_CONFIG, **text})
    folder = sd15_shaped.build_sd15_shaped(tmp_path / "sd15", dtype=torch.float16)
    assert not (tmp_path / "sd15.partial").exists()
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "PNDMScheduler"
    base = load_base_model(folder)
    assert base["unet"].config.cross_attention_dim == 32 and base["unet"].config.sample_size == 64
    assert base["vae"].config.scaling_factor == 0.18215
    assert len(base["tokenizer"]) == 49408 and base["tokenizer"].model_max_length == 77
    assert not base["noise_scheduler"].config.get("set_alpha_to_one", True)  # SD 1.5's PNDM config, as DDPM reads it
    assert base["unet"].dtype == torch.float32  # the fp16 file, loaded in the dtype asked for


@pytest.mark.slow
def test_meta_accounting_predicts_sd15_fits_a_16gb_v100_at_batch_1_fp16():
    """From SD 1.5's configs on the meta device (no weights): seconds, not minutes, and under 16 GB."""
    from bench import meta_accounting as ma
    from bench.sd15_path import V100_ASSUMPTIONS, v100_prediction

    cfg = dda_cfg("train.resolution=512")
    fp16 = ma.account_training_step(
        ma.meta_base_sd15(torch.float16), cfg, batch_size=1, precision="fp16", gradient_checkpointing=False,
        count_flops=False,
    )  # fmt: skip
    prediction = v100_prediction(fp16)
    assert prediction["fits_16gb"] and prediction["device_gib"] < V100_ASSUMPTIONS["usable_gib"]
    # The frozen SD in fp16 (the UNet's 860M parameters at 2 bytes), the VAE upcast to fp32 (SD 1.5's force_upcast).
    assert fp16.weights["unet"] == pytest.approx(2 * SD15_PARAMETERS["unet"], rel=0.01)
    assert fp16.weights["vae"] == pytest.approx(4 * SD15_PARAMETERS["vae"], rel=0.01)
    assert 1 * 2**30 < fp16.activation_peak < 12 * 2**30
    checkpointed = ma.account_training_step(
        ma.meta_base_sd15(torch.float16), cfg, batch_size=1, precision="fp16", gradient_checkpointing=True,
        count_flops=False,
    )  # fmt: skip
    assert checkpointed.activation_peak < 0.7 * fp16.activation_peak


@pytest.mark.slow
def test_accounting_agrees_with_a_measured_cpu_step(tiny_sd):
    """The meta-device prediction of a step's activation peak against the CPU allocator's, on the tiny model."""
    from bench import meta_accounting as ma
    from bench.sd15_path import AGREEMENT, measured_activation_peak
    from models.dda_io import build_dda
    from models.dda_optim import prepare_training

    cfg = dda_cfg(f"model.pretrained={tiny_sd}", "train.resolution=32", "diffusion.num_steps=4")
    predicted = ma.account_training_step(
        ma.meta_base_folder(tiny_sd, torch.float32), cfg, batch_size=2, precision="fp32",
        gradient_checkpointing=False, target="cpu",
    )  # fmt: skip
    torch.manual_seed(0)
    dda = prepare_training(build_dda(cfg)).train()
    source, mask = face_batch(2)
    batch = {"source": source, "target": source.flip(-1), "mask": mask, "has_mask": torch.ones(2, dtype=torch.bool)}
    measured = measured_activation_peak(dda, cfg, batch)
    assert abs(predicted.activation_peak / measured - 1) <= AGREEMENT, (predicted.activation_peak, measured)


def test_meta_autocast_follows_cudas_lists():
    """fp16 for convolutions, fp32 for group norm (autocast's fp32 list), casts of trainable weights cached."""
    from bench.meta_accounting import meta_device

    conv = torch.nn.Conv2d(8, 8, 3, device="meta")  # fp32 weights, trainable
    norm = torch.nn.GroupNorm(4, 8, device="meta")
    x = torch.zeros(1, 8, 4, 4, device="meta", dtype=torch.float16)
    with meta_device("cuda", "memory") as live:
        with torch.autocast("meta", dtype=torch.float16):
            y = conv(x)
            z = norm(y)
            conv(x)
            allocations = live.allocations
            conv(x)  # the weight's fp16 copy is reused: one new output only
            assert live.allocations == allocations + 1
        off = conv(x.float())
    assert y.dtype == torch.float16 and z.dtype == torch.float32 and off.dtype == torch.float32


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_lora_gradients(tiny_sd):
    from models.dda_optim import prepare_training
    from tests.test_dda import make_dda

    grads = []
    for checkpointing in (False, True):
        dda = prepare_training(make_dda(tiny_sd, seed=0), checkpointing).train()
        source, mask = face_batch(2)
        out = dda.training_forward(source, source.flip(-1), mask, generator=torch.Generator().manual_seed(3))
        loss = (out["noise_pred"] - out["noise_target"]).square().mean() + (out["composite"] - source).abs().mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in dda.unet.named_parameters() if "lora_" in n})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    assert any(g.abs().sum() > 0 for g in grads[0].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_cpu_run_refuses_when_free_memory_is_short(monkeypatch):
    from bench import sd15_path

    Memory = namedtuple("Memory", "available total")
    monkeypatch.setattr(sd15_path.psutil, "virtual_memory", lambda: Memory(3 * 2**30, 24 * 2**30))
    with pytest.raises(MakeupError, match=r"needs about 12\.0 GiB.*only 3\.0 GiB is available"):
        sd15_path.check_free_memory(12 * 2**30, "the CPU training step at 512 (fp32)")
    assert sd15_path.check_free_memory(2 * 2**30, "x")["available_gib"] == 3.0


def test_a_unet_that_does_not_predict_epsilon_is_refused(tiny_sd):
    from models.dda import DDA
    from models.sd_base import load_base_model

    base = load_base_model(tiny_sd)
    base["noise_scheduler"].register_to_config(prediction_type="v_prediction")
    with pytest.raises(MakeupError, match=r"model\.pretrained.*'v_prediction'"):
        DDA(base, prompt="x", resolution=32)

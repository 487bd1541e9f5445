"""Stable Diffusion 1.5's parts, from a hub id or a local diffusers folder, frozen for the DDA.

`load_base_model` reads the UNet, VAE, text encoder, tokenizer and training scheduler with each part's
stock `from_pretrained`, so a real SD 1.5 folder, the shipped face prior (`weights/face_prior`) and the
tiny test model (`models/tiny_sd.py`) all go through the same code. Errors name `model.pretrained`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from errors import ModelError

DEFAULT_PRETRAINED = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def _looks_like_path(name: str) -> bool:
    """Hub ids are `owner/name`; anything else (absolute, relative with ./ or deeper) is meant as a folder."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") != 1


def check_local_sd_folder(folder: Path, key: str) -> None:
    missing = [sub for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (folder / sub).is_dir()]
    if missing:
        raise ModelError(
            f"config key '{key}': {folder} is not a Stable Diffusion folder in the diffusers layout "
            f"(missing {', '.join(s + '/' for s in missing)}); expected unet/, vae/, text_encoder/, tokenizer/, "
            "scheduler/ (`python -m models.tiny_sd DIR` writes a tiny one for testing)"
        )


def load_base_model(
    pretrained: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> dict:
    """UNet, VAE, text encoder, tokenizer and training scheduler of SD 1.5 (a hub id or a local diffusers folder).

    Loaded with the stock `from_pretrained` of each part. A missing path, a folder that is not an SD
    folder, or a hub id that cannot be fetched (no network and not cached) stops with a message naming
    `model.pretrained`.
    """
    key = "model.pretrained"
    name = str(pretrained)
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"config key '{key}': {local} is a file, not a diffusers model folder")
        check_local_sd_folder(local, key)
        source = str(local)
    elif _looks_like_path(name):
        raise ModelError(
            f"config key '{key}': model folder not found: {local} (give a local SD 1.5 folder in the "
            f"diffusers layout or a hub id such as {DEFAULT_PRETRAINED})"
        )
    else:
        source = name
    try:  # the local folder, or the hub id from the local cache
        parts = _from_pretrained_parts(source, dtype, local_files_only=True)
    except Exception as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")
        if Path(source).exists() or offline:
            where = (
                "the folder could not be read as a diffusers SD model"
                if Path(source).exists()
                else ("hub id not in the local cache and HF_HUB_OFFLINE is set")
            )
            raise ModelError(f"config key '{key}': could not load '{name}': {where} ({_first_line(err)})") from None
        try:  # not cached: try the hub once
            parts = _from_pretrained_parts(source, dtype, local_files_only=False)
        except Exception as err:
            raise ModelError(
                f"config key '{key}': could not load '{name}' from the hub ({_first_line(err)}). With no "
                "network, download it elsewhere and set model.pretrained to the local folder"
            ) from None
    return frozen_base(*parts, pretrained=name, device=device)


def frozen_base(unet, vae, text_encoder, tokenizer, noise_scheduler, *, pretrained: str, device, dtype=None) -> dict:
    """The base model's parts, frozen and on `device` (cast to `dtype` when given), as DDA takes them."""
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.to(device)
        if dtype is not None:
            module.to(dtype)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "noise_scheduler": noise_scheduler,
        "pretrained": pretrained,
    }


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _from_pretrained_parts(source: str, dtype: torch.dtype, local_files_only: bool):
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    # transformers takes seconds to import: loaded when a model is built
    from transformers import CLIPTextModel, CLIPTokenizer

    common = {"local_files_only": local_files_only}
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **common)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **common)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **common)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)
    if tokenizer.model_max_length > 1000:  # transformers 5 leaves it unset unless the folder says 77
        tokenizer.model_max_length = text_encoder.config.max_position_embeddings
    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **common)
    return unet, vae, text_encoder, tokenizer, scheduler

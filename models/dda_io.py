"""Saving and loading a trained DDA (stage 2's output, stage 3's input).

Two forms, both written by `dda_training.py`:
- `dda_final.pt` / `dda_checkpoint_epoch_N.pt`: the LoRA weights, RDM alpha, FGMM weights and the
  settings (`DDA.state()`), read with `common.load_checkpoint` (weights only, never pickle);
- `pytorch_lora_weights.safetensors` + `dda_modules.json`: the LoRA as any diffusers pipeline loads it
  (`pipe.load_lora_weights(folder)`), with RDM alpha, FGMM weights and settings in plain JSON; a
  region-conditioned DDA also writes `dda_region_conditioning.safetensors` (conv_in's extra input channels,
  `models/region_conditioning.py`).

`dda_final.pt` also says which amplifier stage 3 runs (`amplifier`: dda, draft or draft+dda) and holds the makeup
draft when one was fitted (`draft`, `data/makeup_draft.py`); `load_amplifier` gives stage 3 all of it. A checkpoint
written before the draft existed is a `dda` one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from common import load_checkpoint
from data.makeup_draft import MakeupDraft
from errors import CheckpointError, ConfigError, InputError
from models.dda import DDA, DEFAULT_NUM_STEPS, DEFAULT_SCHEDULER, DEFAULT_STRENGTH
from models.fgmm import REGIONS
from models.sd_base import load_base_model

AMPLIFIERS = ("draft", "draft+dda", "dda")  # stage 2's and stage 3's `amplifier`
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
DDA_MODULES_NAME = "dda_modules.json"  # RDM alpha, FGMM weights and settings next to the LoRA file
REGION_WEIGHTS_NAME = "dda_region_conditioning.safetensors"  # conv_in's extra region channels, when trained


def save_lora(dda: DDA, folder: str | os.PathLike) -> Path:
    """`pytorch_lora_weights.safetensors` (with peft adapter metadata) + `dda_modules.json`, atomically.

    The adapter metadata (rank, lora_alpha, targets) travels inside the safetensors file, so
    `pipe.load_lora_weights(folder)` rebuilds the same scale even when lora_alpha != rank.
    """
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import StableDiffusionPipeline

    # peft imports transformers (seconds): loaded when the LoRA is used
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".lora.", dir=folder))
    try:
        StableDiffusionPipeline.save_lora_weights(
            tmp,
            unet_lora_layers=get_peft_model_state_dict(dda.unet),
            unet_lora_adapter_metadata=dda.unet.peft_config["default"].to_dict(),
            safe_serialization=True,
        )
        (tmp / DDA_MODULES_NAME).write_text(json.dumps(dda.settings(), indent=1))
        if dda.region_conditioning is not None:
            save_file(dda.region_conditioning_state(), str(tmp / REGION_WEIGHTS_NAME))
            os.replace(tmp / REGION_WEIGHTS_NAME, folder / REGION_WEIGHTS_NAME)
        os.replace(tmp / LORA_WEIGHTS_NAME, folder / LORA_WEIGHTS_NAME)
        os.replace(tmp / DDA_MODULES_NAME, folder / DDA_MODULES_NAME)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / LORA_WEIGHTS_NAME


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


def build_dda(
    cfg, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, base: dict | None = None
) -> DDA:
    """The DDA from a stage-2 config (`configs/dda.yaml`); `base`: SD parts already built (else `model.pretrained`)."""
    if base is None:
        base = load_base_model(cfg.model.pretrained, device=device, dtype=dtype)
    return DDA(
        base,
        prompt=str(cfg.model.prompt),
        resolution=int(cfg.train.resolution),
        lora_rank=int(cfg.lora.rank),
        lora_alpha=float(cfg.lora.alpha),
        rdm_alpha=float(cfg.rdm.alpha),
        fgmm={name: float(cfg.fgmm[name]) for name in REGIONS} | {"cheeks": _optional_float(cfg.fgmm.get("cheeks"))},
        strength=float(cfg.diffusion.strength),
        num_steps=int(cfg.diffusion.num_steps),
        scheduler=str(cfg.diffusion.scheduler),
        lora_targets=list(cfg.lora.target_modules),
        lora_dropout=float(cfg.lora.get("dropout", 0.0)),
        region_conditioning=bool(cfg.model.region_conditioning),
        vae_upcast=cfg.model.vae_upcast,
    )


def load_dda(
    checkpoint: str | os.PathLike,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DDA:
    """A trained DDA, ready for `img2img`, from stage 2's output.

    `checkpoint`: `dda_final.pt`, `dda_checkpoint_epoch_N.pt`, or a folder holding `dda_final.pt` or
    `pytorch_lora_weights.safetensors` (+ `dda_modules.json` for alpha, FGMM weights and settings;
    without it alpha is 1 and the FGMM weights 1, and `pretrained` must be given). `pretrained`
    None: the base model recorded at training time.
    """
    path = Path(checkpoint)
    if path.is_dir():
        if (path / "dda_final.pt").is_file():
            path = path / "dda_final.pt"
        elif (path / LORA_WEIGHTS_NAME).is_file():
            return _load_dda_folder(path, pretrained, device, dtype)
        else:
            raise InputError(f"{path} holds neither dda_final.pt nor {LORA_WEIGHTS_NAME}")

    return _dda_from_checkpoint(path, load_checkpoint(path), pretrained, device, dtype)


def _dda_from_checkpoint(path: Path, state: dict, pretrained, device, dtype) -> DDA:
    if "dda" not in state:
        if state.get("amplifier") == "draft":
            raise CheckpointError(f"{path} holds a makeup draft and no DDA (trained with amplifier=draft)")
        raise CheckpointError(f"{path} is not a DDA checkpoint (no 'dda' entry); expected dda_training.py output")
    settings = state["dda"]["settings"]
    base = load_base_model(pretrained or settings["pretrained"], device=device, dtype=dtype)
    dda = _dda_from_settings(settings, base)
    try:
        dda.load_state(state["dda"])
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    dda.to(device)
    return dda.eval()


@dataclass
class Amplifier:
    """What stage 3 makes one style's pairs with: the makeup draft, the DDA, or the DDA correcting the draft."""

    kind: str  # one of AMPLIFIERS
    dda: DDA | None
    draft: MakeupDraft | None
    eye_region: str  # the seeds' mask convention: stage 3 parses new faces alike
    resolution: int  # the size the amplifier works at (the DDA's training resolution, else the draft's)


def checkpoint_amplifier(state: dict) -> str:
    """The amplifier a stage-2 checkpoint was trained for (written before the key existed: the DDA alone)."""
    return str(state.get("amplifier", "dda"))


def load_amplifier(
    checkpoint: str | os.PathLike,
    kind: str | None = None,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Amplifier:
    """Stage 2's output as stage 3 runs it. `kind` None: the amplifier the checkpoint was trained for; another one
    must find what it needs in the checkpoint (a ConfigError names the key and the checkpoint otherwise)."""
    path = Path(checkpoint)
    if path.is_dir() and not (path / "dda_final.pt").is_file():  # a LoRA folder: the DDA alone
        if kind not in (None, "dda"):
            raise ConfigError(f"config key 'amplifier' is {kind}, but {path} is a LoRA folder without a makeup draft")
        dda = load_dda(path, pretrained, device, dtype)
        return Amplifier("dda", dda, None, dda.eye_region, dda.resolution)
    path = path / "dda_final.pt" if path.is_dir() else path
    state = load_checkpoint(path)
    trained = checkpoint_amplifier(state)
    kind = trained if kind is None else str(kind)
    if kind not in AMPLIFIERS:
        raise ConfigError(f"config key 'amplifier' must be one of {', '.join(AMPLIFIERS)} or null, not {kind!r}")
    if kind.startswith("draft") and "draft" not in state:
        raise ConfigError(
            f"config key 'amplifier' is {kind}, but the checkpoint {path} holds no makeup draft (it was trained with "
            f"amplifier={trained}): train one with dda_training.py amplifier={kind}, or set amplifier={trained}"
        )
    if kind.endswith("dda") and "dda" not in state:
        raise ConfigError(
            f"config key 'amplifier' is {kind}, but the checkpoint {path} holds no DDA (it was trained with "
            f"amplifier={trained}): train one with dda_training.py amplifier={kind}, or set amplifier={trained}"
        )
    if kind == "dda" and trained == "draft+dda":
        logging.getLogger("makeup").warning(
            "amplifier=dda, but %s learned to correct drafts (amplifier=draft+dda): on plain faces it paints only "
            "the correction",
            path,
        )
    dda = _dda_from_checkpoint(path, state, pretrained, device, dtype) if kind.endswith("dda") else None
    draft = MakeupDraft.from_state(state["draft"]) if kind.startswith("draft") else None
    eye_region = dda.eye_region if dda is not None else str(state.get("eye_region", "lid"))
    resolution = dda.resolution if dda is not None else draft.size
    return Amplifier(kind, dda, draft, eye_region, resolution)


def _load_dda_folder(folder: Path, pretrained, device, dtype) -> DDA:
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import StableDiffusionPipeline

    # peft imports transformers (seconds): loaded when the LoRA is used
    from peft.utils import get_peft_model_state_dict

    modules_file = folder / DDA_MODULES_NAME
    if modules_file.is_file():
        settings = json.loads(modules_file.read_text())
    elif pretrained is None:
        raise InputError(f"{folder} has no {DDA_MODULES_NAME}: give the base model (model.pretrained)")
    else:
        settings = {"pretrained": pretrained, "prompt": "", "resolution": 512, "rdm_alpha": 1.0, "fgmm": {}}
    # Read the LoRA the way any diffusers pipeline does, then hand its weights to the DDA.
    base = load_base_model(pretrained or settings["pretrained"], device=device, dtype=dtype)
    pipe = StableDiffusionPipeline(
        vae=base["vae"],
        text_encoder=base["text_encoder"],
        tokenizer=base["tokenizer"],
        unet=base["unet"],
        scheduler=base["noise_scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_lora_weights(folder, weight_name=LORA_WEIGHTS_NAME, adapter_name="default")
    config = base["unet"].peft_config["default"]
    lora = {k: v.detach().clone() for k, v in get_peft_model_state_dict(base["unet"]).items()}
    base["unet"].delete_adapters("default")
    settings.setdefault("lora_rank", config.r)
    settings.setdefault("lora_alpha", config.lora_alpha)
    settings.setdefault("lora_targets", sorted(config.target_modules))
    dda = _dda_from_settings(settings, base)
    state = {"lora": lora, "rdm_alpha": torch.tensor(float(settings["rdm_alpha"])), "fgmm": dda.fgmm.state_dict()}
    if dda.region_conditioning is not None:
        weights = folder / REGION_WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(
                f"{folder}: {DDA_MODULES_NAME} says region_conditioning, but {weights.name} is missing"
            )
        state["region_conditioning"] = load_file(str(weights))
    try:
        dda.load_state(state)
    except ValueError as err:
        raise CheckpointError(f"{folder}: {err}") from None
    dda.to(device)
    return dda.eval()


def _dda_from_settings(settings: dict, base: dict) -> DDA:
    dda = DDA(
        base,
        prompt=settings.get("prompt", ""),
        resolution=settings.get("resolution", 512),
        lora_rank=settings["lora_rank"],
        lora_alpha=settings["lora_alpha"],
        rdm_alpha=settings.get("rdm_alpha", 1.0),
        fgmm=settings.get("fgmm") or {},
        strength=settings.get("strength", DEFAULT_STRENGTH),
        num_steps=settings.get("num_steps", DEFAULT_NUM_STEPS),
        scheduler=settings.get("scheduler", DEFAULT_SCHEDULER),
        lora_targets=settings.get("lora_targets"),
        region_conditioning=bool(settings.get("region_conditioning", False)),  # False before it existed
        vae_upcast=settings.get("vae_upcast", "auto"),  # auto before it existed (diffusers' pipelines' rule)
    )
    dda.eye_region = settings.get("eye_region", "lid")  # lid before the key existed
    dda.fgmm.set_colours(settings.get("fgmm_colour"))  # identity before the key existed
    return dda

"""Stage 0 (offline only): train a small Stable-Diffusion-1.5-shaped face prior on a folder of faces.

    python pretrain_prior.py                                  # configs/prior.yaml -> runs/prior/model/
    python pretrain_prior.py stop_after=30                    # a 30-minute slice; run it again to go on
    python pretrain_prior.py vae.steps=20 unet.steps=20 data.eval_count=8 output_dir=/tmp/prior   # smoke run
    python dda_training.py model.pretrained=runs/prior/model  # then use it exactly like an SD 1.5 folder

Real runs use SD 1.5. This stage exists because SD 1.5 cannot be downloaded on this project's
machines, and a random model makes noise, not makeup: the demo and the functional tests need a base
model that knows faces. It writes `model/` in the diffusers layout (`unet/`, `vae/`, `text_encoder/`,
`tokenizer/`, `scheduler/`, `model_index.json`), which `model.pretrained=FOLDER` loads through the very
code path of a real SD 1.5 folder.

The parts, trained in this order (each phase resumes where a killed or time-sliced run stopped):
1. faces: every photo aligned as stage 3 aligns it (data/face_crops.py), cached; unreadable files
   and photos without a face are skipped and listed in `summary.json`.
2. vae: an AutoencoderKL with 4 latent channels (L1 + tiny KL, as SD's), on random patches with
   colour jitter; then its scaling factor is measured on its own latents (1 / std, as SD's 0.18215).
3. unet: a UNet2DConditionModel with cross-attention, trained as SD is (epsilon prediction on SD
   1.5's noise schedule), with most samples at the low timesteps img2img at the DDA's strength visits,
   on precomputed latents (posterior means, as the DDA encodes).
4. decoder (`decoder.steps`, optional): the VAE's decoder alone, fine-tuned on the same latents with
   the encoder frozen (L1 + an L1 on Sobel image gradients), so the latent space and the UNet trained
   on it stay valid while thin lines and edges (liner, lip outlines) come back sharper. With
   `init_from=FOLDER` (a finished prior) the run starts here, from that folder's weights; with
   `init_phase=unet` it fine-tunes that folder's UNet first (e.g. at a higher `data.resolution`).
5. export + figures: the tiny text encoder (frozen, random: the prompt is a fixed code the UNet
   learns to ignore) and SD 1.5's scheduler config complete the folder; VAE PSNR and img2img
   reconstruction PSNR at the DDA's strength are measured on unseen faces (`data.eval_dir`).

Writes to `output_dir`: `model/` (fp32), `prior_state.pt` (resumable), `samples_vae_{step}.png`
(face | reconstruction), `samples_img2img_{step}.png` (face | img2img at the DDA's strength),
`summary.json`, `config.yaml`, `train.log`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import (
    atomic_save_image,
    atomic_write_text,
    config_to_dict,
    count_parameters,
    format_seconds,
    load_checkpoint,
    log,
    parse_stage_args,
    prepare_run_dir,
    run_cli,
    save_checkpoint,
    seed_everything,
)
from data.face_batches import colour_jitter, random_batch, to_model
from data.face_crops import align_folders
from data.io import resize_rgb
from errors import ConfigError, InputError
from losses.eyeliner import sobel_gradients
from models.face_prior import (
    build_text,
    build_unet,
    build_vae,
    embed_prompts,
    encode_all,
    encode_pairs,
    encoder_fingerprint,
    export_model,
    img2img_figures,
    measure_scaling_factor,
    random_prompts,
    vae_figures,
    write_model_card,
)
from models.sd_base import check_local_sd_folder
from models.tiny_sd import sd15_scheduler

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "prior.yaml"
STATE_NAME = "prior_state.pt"
LATENTS_NAME = "latents_{}.pt"  # the encoder's latents of the training faces per phase, reused by a resumed slice
MODEL_DIR = "model"


class TimeUp(Exception):
    """`stop_after` minutes are spent: the state is saved, the same command goes on."""


# --------------------------------------------------------------------------------------------
# Data: aligned crops, resized to the model's resolution, as float tensors in [-1, 1]
# --------------------------------------------------------------------------------------------
def load_faces(cfg, run_dir: Path) -> dict:
    def prepared(folders, stem, limit=None):
        crops = align_folders(folders, run_dir / stem, int(cfg.data.crop_size), float(cfg.data.margin), limit)
        size = int(cfg.data.resolution)
        images = np.stack([resize_rgb(np.asarray(c), size) for c in crops.crops]) if crops.names else None
        return crops, images

    count = int(cfg.data.get("train_count", 0))
    train, train_images = prepared(list(cfg.data.train_dirs), "faces_train", count if count > 0 else None)
    if train_images is None:
        raise ConfigError(f"config key 'data.train_dirs': no face found in {list(cfg.data.train_dirs)}")
    evaluation, eval_images = prepared([cfg.data.eval_dir], "faces_eval", int(cfg.data.eval_count))
    if eval_images is None:
        raise ConfigError(f"config key 'data.eval_dir': no face found in {cfg.data.eval_dir}")
    log.info(
        "faces: %d train (%d skipped), %d eval (%d skipped), %d px",
        len(train.names),
        len(train.skipped),
        len(evaluation.names),
        len(evaluation.skipped),
        cfg.data.resolution,
    )
    return {
        "train": torch.from_numpy(train_images),  # (N, R, R, 3) uint8
        "eval": torch.from_numpy(eval_images),
        "skipped": {**train.skipped, **evaluation.skipped},
        "counts": {"train": len(train.names), "eval": len(evaluation.names)},
    }


# --------------------------------------------------------------------------------------------
# State (resumable, time-sliceable)
# --------------------------------------------------------------------------------------------
PHASES = ("vae", "unet", "decoder")


def new_state() -> dict:
    return {
        "phase": "vae",
        "step": 0,
        "seconds": {name: 0.0 for name in PHASES},
        "history": {name: [] for name in PHASES},
    }


def save_state(run_dir: Path, state: dict, parts: dict, generator: torch.Generator) -> None:
    payload = {
        "state": state,
        "vae": parts["vae"].state_dict(),
        "unet": parts["unet"].state_dict(),
        "text_encoder": parts["text_encoder"].state_dict(),
        "optimizer": parts["optimizer"].state_dict() if parts.get("optimizer") is not None else None,
        "generator": generator.get_state(),
    }
    save_checkpoint(payload, run_dir / STATE_NAME)


def load_state(run_dir: Path, parts: dict, generator: torch.Generator) -> dict:
    path = run_dir / STATE_NAME
    if not path.is_file():
        return new_state()
    payload = torch.load(path, map_location="cpu", weights_only=True)
    parts["vae"].load_state_dict(payload["vae"])
    parts["unet"].load_state_dict(payload["unet"])
    parts["text_encoder"].load_state_dict(payload["text_encoder"])
    parts["optimizer_state"] = payload["optimizer"]  # taken by the phase that resumes (`use_optimizer`)
    generator.set_state(payload["generator"])
    state = payload["state"]
    for name in PHASES:  # a state saved before the decoder phase existed
        state["seconds"].setdefault(name, 0.0)
        state["history"].setdefault(name, [])
    log.info("resumed from %s: phase %s, step %d", path, state["phase"], state["step"])
    return state


# --------------------------------------------------------------------------------------------
# Training phases
# --------------------------------------------------------------------------------------------
def use_optimizer(parts: dict, state: dict, optimizer: torch.optim.Optimizer) -> None:
    """The phase's optimizer, with the saved state of a resumed run (none at a phase's first step)."""
    saved = parts.pop("optimizer_state", None)
    if saved is not None and state["step"] > 0:
        optimizer.load_state_dict(saved)
    parts["optimizer"] = optimizer


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def run_phase(name: str, cfg, run_dir: Path, state: dict, parts: dict, generator, step_fn, sample_fn, clock) -> None:
    """The shared loop of both phases: lr schedule, checkpoints, samples, progress bar, time slices."""
    phase_cfg = cfg[name]
    total = int(phase_cfg.steps)
    optimizer = parts["optimizer"]
    warmup = int(phase_cfg.get("warmup_steps", 50))
    history = state["history"][name]
    with tqdm(total=total, initial=state["step"], desc=name, unit="step", dynamic_ncols=True) as progress:
        while state["step"] < total:
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(state["step"], total, float(phase_cfg.lr), warmup)
            loss = step_fn()
            state["step"] += 1
            state["seconds"][name] += time.perf_counter() - started
            history.append(round(float(loss), 6))
            progress.set_postfix(loss=f"{np.mean(history[-20:]):.4f}")
            progress.update()
            done = state["step"] == total
            if state["step"] % int(cfg.sample_every) == 0 or done:
                sample_fn(state["step"])
            if state["step"] % int(cfg.checkpoint_every) == 0 or done:
                save_state(run_dir, state, parts, generator)
                log.info(
                    "%s step %d/%d: loss %.4f (mean of last 100), %s",
                    name,
                    state["step"],
                    total,
                    float(np.mean(history[-100:])),
                    format_seconds(state["seconds"][name]),
                )
                if clock.expired():
                    raise TimeUp


def train_vae(cfg, run_dir, state, parts, faces, generator, clock) -> None:
    vae = parts["vae"].train()
    use_optimizer(parts, state, torch.optim.AdamW(vae.parameters(), lr=float(cfg.vae.lr), weight_decay=0.0))
    warm_steps, warm_size = int(cfg.vae.warm_steps), int(cfg.vae.warm_size)

    def step() -> float:
        warm = state["step"] < warm_steps
        batch_size = int(cfg.vae.warm_batch_size if warm else cfg.vae.batch_size)
        batch = random_batch(faces["train"], batch_size, generator, bool(cfg.data.hflip))
        if warm:  # whole faces, smaller: GroupNorm sees the statistics of a whole face, as it will at the end
            batch = F.interpolate(batch, size=(warm_size, warm_size), mode="area")
        batch = colour_jitter(batch, float(cfg.vae.colour_jitter), generator)
        posterior = vae.encode(batch).latent_dist
        # The DDA encodes with the posterior mean, and so do the prior's UNet latents: decode the mean.
        # (Sampling starts with unit noise on every latent, which drowns the colour for hundreds of steps:
        # measured 19.5 dB after 500 steps, backgrounds all beige.)
        latent = posterior.sample(generator=generator) if bool(cfg.vae.sample_posterior) else posterior.mean
        recon = vae.decode(latent).sample
        loss = F.l1_loss(recon, batch) + float(cfg.vae.kl_weight) * posterior.kl().mean()
        parts["optimizer"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        parts["optimizer"].step()
        return float(loss)

    def sample(step_index: int) -> None:
        record_vae_figures(
            vae, faces["eval"], state, run_dir / f"samples_vae_{step_index}.png", f"vae step {step_index}:"
        )
        vae.train()

    run_phase("vae", cfg, run_dir, state, parts, generator, step, sample, clock)


def record_vae_figures(vae, eval_images: torch.Tensor, state: dict, grid_path: Path, label: str) -> None:
    """VAE PSNR on the unseen faces into state["figures"], its sample grid to `grid_path`, one log line."""
    figures = vae_figures(vae, eval_images)
    state.setdefault("figures", {})["vae_psnr_db"] = figures["psnr"]
    atomic_save_image(figures["grid"], grid_path)
    log.info("%s %.2f dB on %d unseen faces", label, figures["psnr"], len(eval_images))


def cached_latents(run_dir: Path, kind: str, vae, images: torch.Tensor, encode) -> torch.Tensor | tuple:
    """`encode()` once per run: the result is kept in run_dir/latents_KIND.pt for the encoder that made it
    (encoding 4,500 faces takes ~9 minutes on one core; a resumed slice reads them back instead)."""

    path = run_dir / LATENTS_NAME.format(kind)
    fingerprint = encoder_fingerprint(vae)
    if path.is_file():
        cache = load_checkpoint(path)
        if cache["count"] == len(images) and torch.equal(cache["encoder"], fingerprint):
            log.info("latents of %d faces read from %s", len(images), path)
            return cache["latents"]
    latents = encode()
    save_checkpoint({"count": len(images), "encoder": fingerprint, "latents": latents}, path)
    return latents


def train_unet(cfg, run_dir, state, parts, faces, generator, clock) -> None:
    vae, unet = parts["vae"], parts["unet"].train()
    if "latents" not in parts:
        kind = "unet_hflip" if bool(cfg.data.hflip) else "unet"
        unscaled = cached_latents(
            run_dir, kind, vae, faces["train"], lambda: encode_all(vae, faces["train"], bool(cfg.data.hflip))
        )
        parts["latents"] = unscaled * vae.config.scaling_factor
    latents = parts["latents"]
    use_optimizer(parts, state, torch.optim.AdamW(unet.parameters(), lr=float(cfg.unet.lr), weight_decay=1e-2))
    scheduler = sd15_scheduler()
    alphas = scheduler.alphas_cumprod
    fixed = embed_prompts(parts["tokenizer"], parts["text_encoder"], list(cfg.unet.prompts))
    batch_size = int(cfg.unet.batch_size)

    def step() -> float:
        index = torch.randint(len(latents), (batch_size,), generator=generator)
        clean = latents[index]
        focus = torch.rand(batch_size, generator=generator) < float(cfg.unet.focus_fraction)
        t_focus = torch.randint(0, int(cfg.unet.focus_max_timestep) + 1, (batch_size,), generator=generator)
        t_all = torch.randint(0, 1000, (batch_size,), generator=generator)
        timesteps = torch.where(focus, t_focus, t_all)
        noise = torch.randn(clean.shape, generator=generator)
        a = alphas[timesteps].view(-1, 1, 1, 1)
        noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
        use_random = torch.rand(batch_size, generator=generator) < float(cfg.unet.random_prompt_fraction)
        text = fixed[torch.randint(len(fixed), (batch_size,), generator=generator)]
        if bool(use_random.any()):
            words = random_prompts(int(use_random.sum()), generator)
            text[use_random] = embed_prompts(parts["tokenizer"], parts["text_encoder"], words)
        pred = unet(noisy, timesteps, text).sample
        loss = F.mse_loss(pred, noise)
        parts["optimizer"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        parts["optimizer"].step()
        return float(loss)

    def sample(step_index: int) -> None:
        figures = img2img_figures(cfg, parts, faces["eval"])
        state.setdefault("figures", {})["img2img_psnr_db"] = figures["psnr"]
        atomic_save_image(figures["grid"], run_dir / f"samples_img2img_{step_index}.png")
        log.info(
            "unet step %d: img2img at strength %.2f: %.2f dB on %d unseen faces",
            step_index,
            cfg.eval.strength,
            figures["psnr"],
            len(faces["eval"]),
        )
        unet.train()

    run_phase("unet", cfg, run_dir, state, parts, generator, step, sample, clock)


def train_decoder(cfg, run_dir, state, parts, faces, generator, clock) -> None:
    """The decoder alone on the frozen encoder's latents: the UNet's latent space does not move."""
    vae = parts["vae"]
    if "decoder_latents" not in parts:
        parts["decoder_latents"] = cached_latents(
            run_dir, "decoder", vae, faces["train"], lambda: encode_pairs(vae, faces["train"])
        )
    plain, flipped = parts["decoder_latents"]
    vae.requires_grad_(False)
    trainable = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in trainable:
        p.requires_grad_(True)
    vae.train()
    use_optimizer(parts, state, torch.optim.AdamW(trainable, lr=float(cfg.decoder.lr), weight_decay=0.0))
    batch_size, edge_weight = int(cfg.decoder.batch_size), float(cfg.decoder.edge_weight)
    jitter = float(cfg.decoder.get("colour_jitter", 0.0))

    def step() -> float:
        index = torch.randint(len(plain), (batch_size,), generator=generator)
        flip = torch.rand(batch_size, generator=generator) < (0.5 if bool(cfg.data.hflip) else 0.0)
        images = to_model(faces["train"][index])
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        latents = torch.where(flip.view(-1, 1, 1, 1), flipped[index], plain[index])
        images, picked = colour_jitter(images, jitter, generator, return_picked=True)
        if bool(picked.any()):  # recoloured faces have no cached latents: the frozen encoder's, made here
            with torch.no_grad():
                latents[picked] = vae.encode(images[picked]).latent_dist.mean
        recon = vae.decode(latents).sample
        loss = F.l1_loss(recon, images)
        if edge_weight > 0:
            # per colour channel: a red lip outline on skin has little luma contrast
            loss = loss + edge_weight * F.l1_loss(sobel_gradients(recon), sobel_gradients(images))
        parts["optimizer"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        parts["optimizer"].step()
        return float(loss)

    def sample(step_index: int) -> None:
        grid_path = run_dir / f"samples_decoder_{step_index}.png"
        record_vae_figures(vae, faces["eval"], state, grid_path, f"decoder step {step_index}: VAE")
        if step_index == int(cfg.decoder.steps):  # the new decoder changes what img2img decodes too
            img2img = img2img_figures(cfg, parts, faces["eval"])
            state["figures"]["img2img_psnr_db"] = img2img["psnr"]
            atomic_save_image(img2img["grid"], run_dir / f"samples_img2img_decoder_{step_index}.png")
            log.info(
                "decoder step %d: img2img %.2f dB on %d unseen faces", step_index, img2img["psnr"], len(faces["eval"])
            )
        vae.train()

    run_phase("decoder", cfg, run_dir, state, parts, generator, step, sample, clock)
    vae.requires_grad_(True).eval()


INIT_PHASES = ("decoder", "unet")


def init_from_folder(folder: str, parts: dict, state: dict, cfg) -> None:
    """Weights of a finished prior folder (diffusers layout); the run then starts at `init_phase`: the decoder
    phase, or a fine-tune of the UNet (e.g. at a new `data.resolution`: the VAE and UNet are convolutional)."""
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import AutoencoderKL, UNet2DConditionModel

    phase = str(cfg.get("init_phase", "decoder"))
    if phase not in INIT_PHASES:
        raise ConfigError(f"config key 'init_phase': {phase!r} is not one of {', '.join(INIT_PHASES)}")
    check_local_sd_folder(Path(folder), "init_from")
    if phase == "decoder" and int(cfg.decoder.steps) <= 0:
        raise ConfigError("config key 'init_from' starts at the decoder phase: set decoder.steps > 0")
    if phase == "unet" and int(cfg.unet.steps) <= 0:
        raise ConfigError("config key 'init_phase' is unet: set unet.steps > 0")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    try:
        parts["vae"].load_state_dict(vae.state_dict())
        parts["unet"].load_state_dict(unet.state_dict())
    except RuntimeError as err:
        raise ConfigError(
            f"config key 'init_from': {folder} does not match the vae/unet sizes of this config ({str(err).splitlines()[0]})"
        ) from err
    # transformers takes seconds to import: loaded when a model is built
    from transformers import CLIPTextModel

    text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch.float32)
    parts["text_encoder"].load_state_dict(text.state_dict())
    state.update(phase=phase, step=0, scaling_factor=float(vae.config.scaling_factor), init_from=str(folder))
    log.info("init_from %s: VAE, UNet and text encoder loaded; starting at the %s phase", folder, phase)


def write_summary(cfg, run_dir: Path, state: dict, parts: dict, faces: dict, finished: bool) -> dict:
    summary = {
        "stage": "pretrain_prior",
        "finished": finished,
        "phase": state["phase"],
        "step": state["step"],
        "steps": state.get("steps", {}),
        "init_from": state.get("init_from"),
        "resolution": int(cfg.data.resolution),
        "faces": faces["counts"],
        "skipped": faces["skipped"],
        "params": {
            "vae": count_parameters(parts["vae"]),
            "unet": count_parameters(parts["unet"]),
            "text_encoder": count_parameters(parts["text_encoder"]),
        },
        "scaling_factor": float(parts["vae"].config.scaling_factor),
        "figures": state.get("figures", {}),
        "seconds": {k: round(v, 1) for k, v in state["seconds"].items()},
        "loss_last_100": {k: round(float(np.mean(v[-100:])), 5) if v else None for k, v in state["history"].items()},
        "model": str(run_dir / MODEL_DIR) if finished else None,
        "config": config_to_dict(cfg),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


class Clock:
    def __init__(self, minutes: float):
        self.deadline = time.monotonic() + minutes * 60 if minutes > 0 else math.inf

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline


def main(argv: list[str] | None = None) -> dict:
    args, cfg = parse_stage_args(__doc__, DEFAULT_CONFIG, argv)
    if args.resume:
        raise InputError("pretrain_prior.py resumes by itself from output_dir/prior_state.pt: drop --resume")
    run_dir = prepare_run_dir(cfg)
    seed_everything(int(cfg.seed))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    faces = load_faces(cfg, run_dir)
    tokenizer, text_encoder = build_text(cfg, run_dir)
    parts = {"vae": build_vae(cfg), "unet": build_unet(cfg), "text_encoder": text_encoder, "tokenizer": tokenizer}
    generator = torch.Generator().manual_seed(int(cfg.seed))
    state = load_state(run_dir, parts, generator)
    if cfg.get("init_from") and state["phase"] == "vae" and state["step"] == 0:
        init_from_folder(str(cfg.init_from), parts, state, cfg)
        if state["phase"] == "unet":  # the folder's VAE, measured at this run's resolution
            label = f"init_from VAE at {cfg.data.resolution} px:"
            record_vae_figures(parts["vae"], faces["eval"], state, run_dir / "samples_vae_init.png", label)
    log.info(
        "VAE %.2fM, UNet %.2fM, text encoder %.2fM parameters",
        count_parameters(parts["vae"]) / 1e6,
        count_parameters(parts["unet"]) / 1e6,
        count_parameters(text_encoder) / 1e6,
    )
    clock = Clock(float(cfg.stop_after))
    try:
        if state["phase"] == "vae":
            train_vae(cfg, run_dir, state, parts, faces, generator, clock)
            state.setdefault("steps", {})["vae"] = state["step"]
            factor = measure_scaling_factor(parts["vae"], faces["train"])
            parts["vae"].register_to_config(scaling_factor=factor)
            state.update(phase="unet", step=0, scaling_factor=factor)
            log.info("VAE done: scaling factor %.5f (SD 1.5's: 0.18215)", factor)
            save_state(run_dir, state, {**parts, "optimizer": None}, generator)
        else:
            parts["vae"].register_to_config(scaling_factor=float(state["scaling_factor"]))
        if state["phase"] == "unet":
            train_unet(cfg, run_dir, state, parts, faces, generator, clock)
            state.setdefault("steps", {})["unet"] = state["step"]
            state.update(phase="decoder", step=0)
            save_state(run_dir, state, {**parts, "optimizer": None}, generator)
        if state["phase"] == "decoder":
            if int(cfg.decoder.steps) > 0:
                train_decoder(cfg, run_dir, state, parts, faces, generator, clock)
                state.setdefault("steps", {})["decoder"] = state["step"]
            state["phase"] = "done"
            save_state(run_dir, state, {**parts, "optimizer": None}, generator)
    except TimeUp:
        write_summary(cfg, run_dir, state, parts, faces, finished=False)
        log.info(
            "stop_after=%s minutes reached at %s step %d: state saved, run the same command again to go on",
            cfg.stop_after,
            state["phase"],
            state["step"],
        )
        return {"finished": False, "phase": state["phase"], "step": state["step"]}
    folder = export_model(run_dir / MODEL_DIR, parts)
    summary = write_summary(cfg, run_dir, state, parts, faces, finished=True)
    if cfg.ship_dir:
        shipped = export_model(Path(cfg.ship_dir), parts, torch.float16)
        write_model_card(shipped, summary, argv)
        log.info("fp16 copy with its model card: %s", shipped)
    log.info(
        "prior written to %s: VAE %.2f dB, img2img %.2f dB on unseen faces (%s + %s)",
        folder,
        summary["figures"].get("vae_psnr_db", float("nan")),
        summary["figures"].get("img2img_psnr_db", float("nan")),
        format_seconds(state["seconds"]["vae"]),
        format_seconds(state["seconds"]["unet"]),
    )
    return summary


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

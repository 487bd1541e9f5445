"""The offline face prior's parts: an SD-1.5-shaped VAE, UNet and text encoder built from configs/prior.yaml,
their latents, the figures that measure them, and the diffusers folder they are written to.

`pretrain_prior.py` is the stage that trains them; everything it builds, encodes, measures or exports is
here, so the script reads as its phases. The folder it writes loads through `models/sd_base.py` exactly as
a real SD 1.5 folder does.
"""

from __future__ import annotations

import copy
import platform
import shutil
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from common import atomic_write_text, format_seconds, make_grid, psnr, to_uint8
from data.face_batches import to_model
from models.dda import make_inference_scheduler, visited_timesteps
from models.tiny_sd import build_text_encoder, save_sd_folder, sd15_scheduler


def build_vae(cfg):
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import AutoencoderKL

    levels = len(cfg.vae.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.vae.block_out_channels),
        layers_per_block=int(cfg.vae.layers_per_block),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=int(cfg.data.resolution),
        scaling_factor=1.0,  # measured after training (`measure_scaling_factor`)
    )


def build_unet(cfg):
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import UNet2DConditionModel

    factor = 2 ** (len(cfg.vae.block_out_channels) - 1)
    return UNet2DConditionModel(
        sample_size=int(cfg.data.resolution) // factor,
        in_channels=4,
        out_channels=4,
        layers_per_block=int(cfg.unet.layers_per_block),
        block_out_channels=tuple(cfg.unet.block_out_channels),
        down_block_types=tuple(cfg.unet.down_block_types),
        up_block_types=tuple(cfg.unet.up_block_types),
        cross_attention_dim=int(cfg.text_encoder.hidden_size),
        attention_head_dim=int(cfg.unet.attention_head_dim),
        norm_num_groups=32,
    )


def build_text(cfg, run_dir: Path):
    torch.manual_seed(int(cfg.seed))  # the text encoder is random but fixed by the seed
    tokenizer, text_encoder = build_text_encoder(run_dir / ".tokenizer_files", int(cfg.text_encoder.hidden_size))
    return tokenizer, text_encoder.requires_grad_(False).eval()


@torch.no_grad()
def embed_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids)[0]


def random_prompts(count: int, generator: torch.Generator) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    prompts = []
    for _ in range(count):
        words = int(torch.randint(1, 8, (1,), generator=generator))
        lengths = torch.randint(2, 9, (words,), generator=generator).tolist()
        prompts.append(
            " ".join(
                "".join(letters[i] for i in torch.randint(26, (n,), generator=generator).tolist()) for n in lengths
            )
        )
    return prompts


@torch.no_grad()
def vae_figures(vae, eval_images: torch.Tensor, rows: int = 6) -> dict:
    vae.eval()
    scores, recons = [], []
    for start in range(0, len(eval_images), 16):
        batch = to_model(eval_images[start : start + 16])
        recon = vae.decode(vae.encode(batch).latent_dist.mean).sample.clamp(-1, 1)
        scores.append(psnr(recon, batch))
        recons.append(recon)
    recon = torch.cat(recons)
    faces = to_model(eval_images[:rows])
    grid = make_grid([[to_uint8(faces[i]), to_uint8(recon[i])] for i in range(min(rows, len(faces)))], ["face", "VAE"])
    return {"psnr": round(float(torch.cat(scores).mean()), 3), "grid": grid}


def encoder_fingerprint(vae) -> torch.Tensor:
    return torch.stack([p.detach().double().sum() for p in vae.encoder.parameters()])


@torch.no_grad()
def _encoded_chunks(vae, images: torch.Tensor, hflip: bool):
    """(plain, mirrored or None) posterior means, unscaled, for each chunk of 32 faces."""
    vae.eval()
    for start in tqdm(range(0, len(images), 32), desc="encoding faces", unit="batch", dynamic_ncols=True):
        batch = to_model(images[start : start + 32])
        plain = vae.encode(batch).latent_dist.mean
        yield plain, (vae.encode(batch.flip(-1)).latent_dist.mean if hflip else None)


def encode_all(vae, images: torch.Tensor, hflip: bool) -> torch.Tensor:
    """Posterior means of every face (and of its mirror image), unscaled: (N or 2N, 4, h, w)."""
    latents = []
    for plain, mirrored in _encoded_chunks(vae, images, hflip):
        latents += [plain] if mirrored is None else [plain, mirrored]
    return torch.cat(latents)


def encode_pairs(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means of every face and of its mirror image, unscaled, index for index: ((N, 4, h, w), same)."""
    plain, mirrored = zip(*_encoded_chunks(vae, images, hflip=True))
    return torch.cat(plain), torch.cat(mirrored)


@torch.no_grad()
def img2img_figures(cfg, parts: dict, eval_images: torch.Tensor, rows: int = 6) -> dict:
    """Image-to-image at the DDA's strength (DDIM, SD 1.5's scheduler config), as stage 3 runs the base model."""
    vae, unet = parts["vae"].eval(), parts["unet"].eval()
    text = embed_prompts(parts["tokenizer"], parts["text_encoder"], ["a photo of a face with sks makeup"])
    generator = torch.Generator().manual_seed(1234)
    scores, outputs = [], []
    for start in range(0, len(eval_images), 16):
        faces = to_model(eval_images[start : start + 16])
        scheduler = make_inference_scheduler(sd15_scheduler(), "ddim")
        timesteps = visited_timesteps(scheduler, float(cfg.eval.strength), int(cfg.eval.num_steps))
        z = vae.encode(faces).latent_dist.mean * vae.config.scaling_factor
        noise = torch.randn(z.shape, generator=generator)
        latents = scheduler.add_noise(z, noise, timesteps[:1].repeat(len(z)))
        for t in timesteps:
            pred = unet(latents, t, text.expand(len(z), -1, -1)).sample
            latents = scheduler.step(pred, t, latents).prev_sample
        out = vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)
        scores.append(psnr(out, faces))
        outputs.append(out)
    out = torch.cat(outputs)
    faces = to_model(eval_images[:rows])
    grid = make_grid(
        [[to_uint8(faces[i]), to_uint8(out[i])] for i in range(min(rows, len(faces)))],
        ["face", f"img2img {cfg.eval.strength}"],
    )
    return {"psnr": round(float(torch.cat(scores).mean()), 3), "grid": grid}


@torch.no_grad()
def measure_scaling_factor(vae, images: torch.Tensor, count: int = 512) -> float:
    """1 / std of the posterior means, as SD measured its 0.18215: unit-variance latents for the UNet."""
    vae.eval()
    means = [vae.encode(to_model(images[s : s + 32])).latent_dist.mean for s in range(0, min(count, len(images)), 32)]
    return float(1.0 / torch.cat(means).std())


def export_model(final: Path, parts: dict, dtype: torch.dtype = torch.float32) -> Path:
    """The diffusers folder (weights in `dtype`), written beside its final name and renamed into place."""
    if dtype != torch.float32:
        parts = {k: copy.deepcopy(v).to(dtype) if isinstance(v, torch.nn.Module) else v for k, v in parts.items()}
    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_sd_folder(
        tmp,
        unet=parts["unet"],
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        scheduler=sd15_scheduler(),
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def write_model_card(folder: Path, summary: dict, argv) -> Path:
    """README.md of the shipped prior: data and licence, the command, time and machine, measured figures."""
    figures, seconds, params = summary["figures"], summary["seconds"], summary["params"]
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    command = "python pretrain_prior.py " + " ".join(argv if argv is not None else sys.argv[1:])
    cfg = summary["config"]
    steps = summary.get("steps", {})
    decoder = (
        f", then the decoder alone {format_seconds(seconds.get('decoder', 0.0))} ({steps['decoder']} steps, encoder and "
        "UNet frozen: L1 + Sobel-edge L1)"
        if steps.get("decoder")
        else ""
    )
    if summary.get("init_from"):
        base = _card_command(Path(summary["init_from"]))
        unet = (
            f"; the UNet fine-tuned on it at {summary['resolution']} px for {steps['unet']} steps in "
            f"{format_seconds(seconds.get('unet', 0.0))}"
            if steps.get("unet")
            else ""
        )
        made_of = (
            f"VAE and UNet from `{summary['init_from']}`"
            + (f" (made by `{base}`)" if base else "")
            + unet
            + decoder[1:]
            + ",\n"
        )
    else:
        made_of = (
            f"Training time: VAE {format_seconds(seconds['vae'])}, UNet {format_seconds(seconds['unet'])} "
            f"({steps.get('unet', summary['step'])} UNet steps){decoder},\n"
        )
    factor_note = "measured on its own latents (1 / std)"
    if summary.get("init_from"):
        factor_note = f"as measured for `{summary['init_from']}`'s VAE on its own latents (1 / std)"
    count = torch.get_num_threads()
    threads = f"{count} thread" + ("s" if count > 1 else "")
    text = f"""# Face prior: a small SD-1.5-shaped diffusion model of faces

The embedded default base model of the demo and of the tests that need a working diffusion model
(`python run_demo.py`, `model.pretrained=weights/face_prior`). Real runs use Stable Diffusion 1.5,
which cannot be downloaded on this project's machines. Same layout and code path as an SD 1.5 folder
(`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`, `model_index.json`); fp16 safetensors,
{size_mb:.1f} MB in all.

| part | what |
|---|---|
| VAE | AutoencoderKL, {params["vae"] / 1e6:.2f}M parameters, 4 latent channels, downsampling 4 ({summary["resolution"]} px -> {summary["resolution"] // 4}x{summary["resolution"] // 4}), scaling factor {summary["scaling_factor"]:.5f} {factor_note} |
| UNet | UNet2DConditionModel, {params["unet"] / 1e6:.2f}M parameters, cross-attention at the two coarser levels, epsilon prediction on SD 1.5's noise schedule, {cfg["unet"]["focus_fraction"]:.0%} of samples at t <= {cfg["unet"]["focus_max_timestep"]} (img2img at strength 0.3 visits 201, 101, 1) |
| text encoder | tiny CLIP ({params["text_encoder"] / 1e3:.0f}K parameters), random and frozen: the prompt is a fixed code; the UNet was trained on varied prompts so it ignores them |
| scheduler | SD 1.5's own config (PNDM, scaled_linear 0.00085-0.012, `set_alpha_to_one: false`, `steps_offset: 1`) |

## Data and licence
Trained on {summary["faces"]["train"]} faces of `faces_more/` (SCUT-FBP5500 and CelebAMask-HQ images,
aligned by the project's face aligner as stage 3 aligns; {len(summary["skipped"])} file(s) skipped:
{", ".join(sorted(summary["skipped"])) or "none"}). Both datasets are released for **non-commercial research
use only**, and so are these weights. Figures measured on {summary["faces"]["eval"]} faces of `faces/`
(SCUT-FBP5500), which the prior never saw.

## Measured (unseen faces, {summary["resolution"]} px)
| figure | value |
|---|---|
| VAE reconstruction PSNR | {figures.get("vae_psnr_db", float("nan")):.2f} dB |
| img2img reconstruction PSNR at strength {cfg["eval"]["strength"]} ({cfg["eval"]["num_steps"]} DDIM steps, the DDA's setting) | {figures.get("img2img_psnr_db", float("nan")):.2f} dB |

## How it was made
```
{command}
```
{made_of}on {platform.machine()} CPU, {threads} (the project's 2-core machine, no GPU). The resolved
config is `config.yaml` of the run folder; `configs/prior.yaml` explains each choice.
"""
    return atomic_write_text(folder / "README.md", text)


def _card_command(folder: Path) -> str | None:
    """The command line in an earlier model card of `folder`, if it has one."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    lines = card.read_text().splitlines()
    found = [line.strip() for line in lines if line.strip().startswith("python pretrain_prior.py")]
    return found[0] if found else None

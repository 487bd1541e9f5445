"""A tiny Stable-Diffusion-1.5-shaped model, written offline in the diffusers folder layout.

    python -m models.tiny_sd OUT_DIR          # e.g. python -m models.tiny_sd runs/tiny_sd

Nothing can be downloaded on the machines this project is tested on, so the tests and the demo use
this instead of `stable-diffusion-v1-5/stable-diffusion-v1-5`. It has the same parts and the same
layout (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`, `model_index.json`), so it
goes through exactly the code path a real SD 1.5 folder takes (`from_pretrained` of each part, and
`StableDiffusionPipeline.from_pretrained(OUT_DIR)` too). The weights are random: it produces noise,
not faces, but every shape, scaling factor and scheduler setting is SD 1.5's.

- UNet2DConditionModel: two levels (32, 64 channels), cross-attention (width 32) at the coarser one,
  latent size 32.
- AutoencoderKL: 4 latent channels, SD's 0.18215 scaling factor, two levels (downsamples by 2,
  where SD's downsamples by 8; the pipeline reads the factor from the config).
- CLIPTextModel: 2 layers of width 32 over a byte-level BPE vocabulary that this module writes
  (every byte, every byte at a word end, a few merges, SD's special tokens).
- DDPMScheduler: SD 1.5's (scaled_linear, 0.00085 .. 0.012, 1000 steps, epsilon prediction).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

TINY_SD_SEED = 0


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map of the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def write_byte_level_vocab(folder: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt for a CLIP tokenizer: every byte alone and at a word end, plus a few merges."""
    symbols = list(_bytes_to_unicode().values())
    vocab_tokens = symbols + [s + "</w>" for s in symbols]
    # A handful of merges so the BPE path is exercised (CLIP's real file has 48,894).
    merges = [("m", "a"), ("k", "e</w>"), ("u", "p</w>"), ("s", "k"), ("f", "a"), ("c", "e</w>")]
    for left, right in merges:
        vocab_tokens.append(left + right)
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_tokens))}
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return vocab_file, merges_file


def build_text_encoder(work_dir: Path, hidden_size: int = 32):
    """A CLIP tokenizer over `write_byte_level_vocab`'s vocabulary and a 2-layer CLIPTextModel (random).

    `work_dir` holds the vocabulary files while the tokenizer is built; it is removed afterwards.
    """
    # transformers takes seconds to import: loaded when a model is built
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_file, merges_file = write_byte_level_vocab(work_dir)
    # transformers 5 does not fill in CLIP's 77-token limit by itself: set it explicitly.
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=hidden_size,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    for path in work_dir.iterdir():
        path.unlink()
    work_dir.rmdir()
    return tokenizer, text_encoder


def tiny_scheduler():
    """The tiny model's training scheduler: SD 1.5's betas (scaled_linear 0.00085 .. 0.012, 1000 steps, epsilon)."""
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def sd15_scheduler():
    """SD 1.5's own scheduler folder: PNDM with `set_alpha_to_one: false` and `skip_prk_steps: true`.

    DDIM built from this config ends one step short of alpha 1 (the last step does not land on x0
    exactly); `DDPMScheduler.from_pretrained` of the folder reads the same betas.
    """
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type="epsilon",
    )


def save_sd_folder(out_dir, *, unet, vae, text_encoder, tokenizer, scheduler=None) -> Path:
    """Write the parts as a StableDiffusionPipeline folder (diffusers layout, safetensors)."""
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler or tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def build_tiny_sd(out_dir: str | os.PathLike, seed: int = TINY_SD_SEED) -> Path:
    """Write the tiny SD-shaped model to `out_dir` (diffusers layout) and return the folder."""
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import AutoencoderKL, UNet2DConditionModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        # Attention at the coarser level only, which keeps a CPU step fast (SD has it at three levels).
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.18215,
    )
    tokenizer, text_encoder = build_text_encoder(out_dir / "tokenizer_files", hidden_size=32)
    save_sd_folder(out_dir, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        raise SystemExit("usage: python -m models.tiny_sd OUT_DIR")
    folder = build_tiny_sd(argv[0])
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"tiny SD-1.5-shaped model written to {folder} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

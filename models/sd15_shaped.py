"""A Stable Diffusion 1.5-shaped model with random weights, written offline in the diffusers layout.

    python -m models.sd15_shaped /work/runs/sd15_shaped                          # about 4.3 GB (fp32)
    python -m models.sd15_shaped /work/runs/sd15_shaped_fp16 --dtype float16     # about 2.1 GB

SD 1.5's weights cannot be downloaded on this project's machines, so the full-size path (stage 2 and 3 at
512 px, `bench/sd15_path.py`) runs on this instead: every part has SD 1.5's published config
(`stable-diffusion-v1-5/stable-diffusion-v1-5`, its `unet/`, `vae/`, `text_encoder/` and `scheduler/`
config files), so shapes, parameter counts (UNet 859.5M, VAE 83.7M, CLIP ViT-L text encoder 123.1M), LoRA
module names, memory and FLOPs are SD 1.5's; the weights are random, so it makes noise, not faces. The
folder has SD 1.5's layout and is read by `models.sd_base.load_base_model` exactly as a real SD 1.5 folder.

The tokenizer works offline: `models.tiny_sd`'s byte-level BPE vocabulary (every byte, alone and at a word
end, a few merges), filled up to CLIP's 49,408 entries with tokens no text produces, and SD 1.5's special
tokens at SD 1.5's ids (49406 start, 49407 end and padding). So the text encoder's embedding has SD 1.5's
size; prompts tokenize to bytes instead of CLIP's words (a real SD 1.5 prompt is shorter in tokens).

Keep the folder outside the repository (it is 4 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from models.tiny_sd import save_sd_folder, sd15_scheduler, write_byte_level_vocab

SD15_SEED = 0
# SD 1.5's unet/config.json (the keys that are not diffusers' defaults are all written out).
UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,  # diffusers' name for SD 1.5's 8 heads (head widths 40, 80, 160)
}
# SD 1.5's vae/config.json; its file has no force_upcast key, so diffusers' default (true) applies.
VAE_CONFIG = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
# SD 1.5's text_encoder/config.json: the text half of CLIP ViT-L/14.
TEXT_ENCODER_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "bos_token_id": 0,  # SD 1.5's file says 0/2/1 (CLIP's original ids); the tokenizer's are 49406/49407
    "eos_token_id": 2,
    "pad_token_id": 1,
}
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"  # ids 49406 and 49407, as in SD 1.5's tokenizer


def build_unet(device: str | torch.device = "cpu"):
    """SD 1.5's UNet2DConditionModel with random weights (`device="meta"`: shapes only, no memory)."""
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**UNET_CONFIG)


def build_vae(device: str | torch.device = "cpu"):
    """SD 1.5's AutoencoderKL with random weights."""
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import AutoencoderKL

    with torch.device(device):
        return AutoencoderKL(**VAE_CONFIG)


def build_text_encoder(device: str | torch.device = "cpu"):
    """SD 1.5's CLIPTextModel (ViT-L/14's text half) with random weights."""
    # transformers takes seconds to import: loaded when a model is built
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        return CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))


def build_tokenizer(work_dir: str | os.PathLike):
    """A CLIP tokenizer of 49,408 entries that needs no download (see the module docstring).

    `work_dir` holds the vocabulary files while the tokenizer is built; it is removed afterwards.
    """
    # transformers takes seconds to import: loaded when a model is built
    from transformers import CLIPTokenizer

    work_dir = Path(work_dir)
    vocab_file, merges_file = write_byte_level_vocab(work_dir)
    vocab = json.loads(vocab_file.read_text())
    for special in (START_TOKEN, END_TOKEN):
        vocab.pop(special)
    size = TEXT_ENCODER_CONFIG["vocab_size"]
    # Tokens no merge produces fill the ids up to SD 1.5's special tokens: the embedding gets CLIP's size.
    filler = (f"<|unused_{i}|>" for i in range(size))
    while len(vocab) < size - 2:
        vocab[next(filler)] = len(vocab)
    vocab[START_TOKEN], vocab[END_TOKEN] = size - 2, size - 1
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    shutil.rmtree(work_dir)
    return tokenizer


def build_sd15_shaped(out_dir: str | os.PathLike, dtype: torch.dtype = torch.float32, seed: int = SD15_SEED) -> Path:
    """Write the SD-1.5-shaped model to `out_dir` (diffusers layout, safetensors, SD 1.5's PNDM scheduler).

    Written into `OUT_DIR.partial` and renamed when complete: a killed run leaves no half-written model."""
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")  # renamed to out_dir once complete
    shutil.rmtree(partial, ignore_errors=True)
    torch.manual_seed(seed)
    unet, vae, text_encoder = build_unet(), build_vae(), build_text_encoder()
    if dtype != torch.float32:
        for module in (unet, vae, text_encoder):
            module.to(dtype)
    tokenizer = build_tokenizer(partial / "tokenizer_files")
    save_sd_folder(
        partial, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=sd15_scheduler()
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("out_dir", help="the folder to write (about 4.3 GB in float32: keep it outside the repository)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="weights' dtype")
    args = parser.parse_args(argv)
    folder = build_sd15_shaped(args.out_dir, getattr(torch, args.dtype))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"SD-1.5-shaped model (random weights, {args.dtype}) written to {folder} ({size / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()

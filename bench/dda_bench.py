"""Seconds per DDA training step and peak memory (JSON on stdout, and to --out if given).

    python bench/dda_bench.py                          # tiny offline model on CPU, 64x64
    python bench/dda_bench.py --resolution 128 --steps 10 --out bench/dda_bench.json
    python bench/dda_bench.py --sd15                   # + an SD-1.5-sized model (random weights), 512, fp16 (CUDA)

A step is exactly `dda_training.train_epoch`'s: the training forward (LoRA UNet with gradients, base
UNet for S', decode of both x0 predictions; the source and target latents from the run's latent cache,
as stage 2 encodes each seed pair once), the three losses, backward, clipping and Adam, with the LoRA
of configs/dda.yaml (`lora.target_modules`: attention and ResNet convolutions). The SD-1.5-sized part
builds SD 1.5's UNet/VAE/CLIP text encoder (models/sd15_shaped.py) with random weights in memory
(timing does not depend on the weights) and needs a GPU; it reports the allocator's peak allocated and
reserved memory. Memory and FLOPs without a GPU: bench/sd15_path.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from common import atomic_write_text, count_parameters, load_config
from losses.dda import DDALoss
from models import sd15_shaped
from models.dda_io import build_dda
from models.dda_optim import LatentCache, build_optimizer, prepare_training, train_step
from models.sd_base import frozen_base, load_base_model
from models.tiny_sd import build_tiny_sd, sd15_scheduler

REPO = Path(__file__).resolve().parents[1]


def sd15_sized_base(work: Path, device, dtype) -> dict:
    """SD 1.5's UNet, VAE and text encoder (models/sd15_shaped.py: 860M + 84M + 123M parameters), random weights."""
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import DDPMScheduler

    parts = sd15_shaped.build_unet(), sd15_shaped.build_vae(), sd15_shaped.build_text_encoder()
    tokenizer = sd15_shaped.build_tokenizer(work / "sd15_tokenizer")
    scheduler = DDPMScheduler.from_config(sd15_scheduler().config)  # SD 1.5's folder, as load_base_model reads it
    return frozen_base(*parts, tokenizer, scheduler, pretrained="random SD-1.5-shaped", device=device, dtype=dtype)


def time_steps(base: dict, cfg, device, use_fp16: bool, steps: int, warmup: int = 2) -> dict:
    dda = build_dda(cfg, device=device, base=base)  # configs/dda.yaml's LoRA (rank, targets), losses, vae_upcast
    prepare_training(dda, cfg.model.gradient_checkpointing)
    dda.train()
    res, batch_size = cfg.train.resolution, cfg.train.batch_size
    mask = torch.full((batch_size, res, res), 3, dtype=torch.long)
    mask[:, res // 4 : res // 3, res // 5 : res // 2] = 1
    batch = {
        "source": torch.rand(batch_size, 3, res, res) * 2 - 1,
        "target": torch.rand(batch_size, 3, res, res) * 2 - 1,
        "mask": mask,
        "has_mask": torch.ones(batch_size, dtype=torch.bool),
    }
    optimizer = build_optimizer(dda, cfg.train.lr, cfg.train.scalar_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=use_fp16)
    loss_fn = DDALoss.from_config(cfg).to(device)
    latent_cache = LatentCache()  # as dda_training.py: the pair is encoded once, in the warm-up

    def run(n: int) -> None:
        for _ in range(n):
            train_step(dda, batch, loss_fn, optimizer, scaler, cfg.train.grad_clip, use_fp16, latent_cache)

    run(warmup)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    run(steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    result = {
        "resolution": res,
        "batch_size": batch_size,
        "dtype": "fp16 autocast" if use_fp16 else "fp32",
        "gradient_checkpointing": bool(cfg.model.gradient_checkpointing),
        "steps_timed": steps,
        "seconds_per_step": round(seconds, 4),
        "lora_target_modules": list(dda.lora_targets),
        "trainable_params": count_parameters(dda, trainable_only=True),
        "total_params": count_parameters(dda),
        "hours_for_500_epochs_x_5_pairs": round(seconds * 500 * 5 / 3600, 3),
    }
    if device.type == "cuda":
        result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["peak_gpu_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        result["device"] = torch.cuda.get_device_name()
    else:
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        result["device"] = f"cpu ({torch.get_num_threads()} threads)"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64, help="tiny-model resolution (default %(default)s)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--sd15", action="store_true", help="also time an SD-1.5-sized model at 512 (needs CUDA)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = [f"train.resolution={args.resolution}", "wandb.mode=disabled", "model.gradient_checkpointing=false"]
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_sd(Path(tmp) / "tiny_sd")
        cfg = load_config(REPO / "configs" / "dda.yaml", [*overrides, f"model.pretrained={tiny}"])
        cpu = torch.device("cpu")
        report["tiny_cpu"] = time_steps(load_base_model(tiny), cfg, cpu, False, args.steps)
        if not torch.cuda.is_available():
            report["sd15_cuda"] = "not measured: no GPU on this machine"
        elif args.sd15:
            gpu = torch.device("cuda")
            cfg = load_config(REPO / "configs" / "dda.yaml", ["train.resolution=512", "wandb.mode=disabled"])
            base = sd15_sized_base(Path(tmp), gpu, torch.float16)
            report["sd15_cuda"] = time_steps(base, cfg, gpu, True, args.steps)
    print(json.dumps(report))  # the last line is the JSON
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

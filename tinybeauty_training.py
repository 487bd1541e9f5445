"""Stage 4: train TinyBeauty, a tiny makeup U-Net, on paired faces (TinyBeauty, ECCV 2024, Sec. 3.3).

    python tinybeauty_training.py data.root=../shared/data/pairs_style1
    python tinybeauty_training.py data.root=amplified/ output_dir=runs/tb train.epochs=2 wandb.mode=disabled
    python tinybeauty_training.py --resume tinybeauty_model/tinybeauty_last.pt      # continue exactly

Residual learning: the model predicts a makeup residual added to the face. Loss = L1 (x8 on the lips, x4
on the eyes when masks are present) + Sobel eyeliner x 0.05 in the eye region (`losses/tinybeauty.py`).
Adam at 6e-3; warmup + cosine per step (or the seed's ReduceLROnPlateau on the validation loss with
`train.scheduler=plateau`). configs/tinybeauty.yaml says why, with the figures of bench/tinybeauty_arch_sweep.py. Every epoch: validation loss,
PSNR, SSIM, next to the identity PSNR (source vs target) on the same split. Every `train.sample_every`
epochs: samples_epoch_{epoch}.png (source | prediction | target | amplified residual) on fixed faces.

OUTPUT_DIR gets config.yaml, train.log, split.json, metrics.csv + metrics.jsonl, samples_epoch_*.png,
tinybeauty_{best_loss,best_psnr,final,last}.pt (each resumable: weights, config, epoch, metrics,
optimizer, scheduler, scaler and RNG state) and summary.json.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from common import (
    REPO_ROOT,
    WandbLogger,
    amplify_residual,
    atomic_save_image,
    atomic_write_text,
    config_to_dict,
    count_parameters,
    format_seconds,
    get_device,
    get_rng_state,
    log,
    make_grid,
    parse_resumable_args,
    prepare_run_dir,
    psnr,
    require_dir,
    run_cli,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    ssim,
    to_uint8,
)
from data.paired import DatasetError, PairedDataset, scan_pairs, split_names, write_split
from errors import ConfigError, InputError
from losses.tinybeauty import TinyBeautyLoss
from models.tinybeauty import build_tinybeauty, count_macs, model_size_kb

DEFAULT_CONFIG = REPO_ROOT / "configs" / "tinybeauty.yaml"
ARCH = "tinybeauty"
LR_SCHEDULERS = ("cosine", "plateau")  # the values of train.scheduler
CHECKPOINTS = {
    "best_loss": "tinybeauty_best_loss.pt",
    "best_psnr": "tinybeauty_best_psnr.pt",
    "final": "tinybeauty_final.pt",
    "last": "tinybeauty_last.pt",
}
METRIC_COLUMNS = [
    "epoch", "step", "lr", "train_loss", "train_l1", "train_eyeliner", "train_img_per_s",
    "val_loss", "val_l1", "val_eyeliner", "val_psnr", "val_ssim", "identity_psnr", "seconds",
]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Config and command line
# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> tuple:
    """`--resume CKPT` without `--config` continues with the checkpoint's config (overrides on top)."""
    args, cfg, resume_state = parse_resumable_args(__doc__, DEFAULT_CONFIG, argv)
    check_config(cfg)
    return args, cfg, resume_state


def check_config(cfg: DictConfig) -> None:
    """Values the type check cannot catch; each message names its key."""
    rules = [
        ("data.val_fraction", 0 < cfg.data.val_fraction < 1, "between 0 and 1 (exclusive)"),
        ("train.epochs", cfg.train.epochs >= 1, "at least 1"),
        ("train.batch_size", cfg.train.batch_size >= 1, "at least 1"),
        ("train.lr", cfg.train.lr > 0, "positive"),
        ("train.scheduler", cfg.train.scheduler in LR_SCHEDULERS, " or ".join(LR_SCHEDULERS)),
        ("train.sample_every", cfg.train.sample_every >= 1, "at least 1"),
        ("train.stop_after", cfg.train.stop_after >= 0, "0 or more"),
    ]  # fmt: skip
    for key, ok, expected in rules:
        if not ok:
            raise ConfigError(f"config key '{key}' must be {expected}, got {OmegaConf.select(cfg, key)!r}")
    model = build_model(cfg)  # a bad model.* value stops here, before any data is read
    # Each pooling level halves the image (and the space_to_depth stem once more): a size that does not
    # divide evenly leaves skip and upsampled maps of different sizes, which crash in forward.
    factor = model.downsample_factor
    why = "the model's downsampling factor: 2 per level of model.widths" + (
        ", x2 for model.stem space_to_depth" if model.stem == "space_to_depth" else ""
    )
    for key, allow_zero in (("data.size", False), ("train.crop_size", True)):
        value = OmegaConf.select(cfg, key)
        if not ((allow_zero and value == 0) or (value >= factor and value % factor == 0)):
            zero = "0 or " if allow_zero else ""
            raise ConfigError(
                f"config key '{key}' must be {zero}a positive multiple of {factor} ({why}), got {value!r}"
            )


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
def build_data(cfg: DictConfig, run_dir: Path) -> tuple[PairedDataset, PairedDataset, dict]:
    try:
        scan = scan_pairs(cfg.data.root)
    except DatasetError as err:
        raise ConfigError(f"{err} (config key 'data.root')") from None
    for line in scan.skipped:
        log.warning("skipped: %s", line)
    for line in scan.warnings:
        log.warning("%s", line)
    log.info("pairs: %d usable, %d skipped in %s", len(scan.pairs), len(scan.skipped), cfg.data.root)
    if len(scan.pairs) < 2:
        raise InputError(f"{cfg.data.root} has {len(scan.pairs)} usable pair(s); need 2 or more to validate")
    by_name = {pair.name: pair for pair in scan.pairs}
    train_names, val_names = split_names(list(by_name), cfg.data.val_fraction, cfg.seed)
    write_split(run_dir / "split.json", train_names, val_names, cfg.seed)
    train_set = PairedDataset([by_name[n] for n in train_names], cfg.data.size, cfg.data.hflip, cfg.data.cache)
    val_set = PairedDataset([by_name[n] for n in val_names], cfg.data.size, hflip=False, cache=cfg.data.cache)
    if cfg.data.cache:  # decode once up front, so every epoch after the first costs no disk or decoding
        for dataset in (train_set, val_set):
            for index in tqdm(range(len(dataset)), desc="caching pairs", leave=False, disable=None):
                dataset.load_arrays(index)
    info = {
        "pairs_found": len(scan.pairs) + len(scan.skipped),
        "pairs_train": len(train_names),
        "pairs_val": len(val_names),
        "skipped_pairs": len(scan.skipped),
        "skipped": scan.skipped,
    }
    log.info("split: %d train, %d validation (seed %d) -> split.json", len(train_names), len(val_names), cfg.seed)
    return train_set, val_set, info


def build_model(cfg: DictConfig) -> torch.nn.Module:
    return build_tinybeauty(config_to_dict(cfg.model), ARCH)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """cosine: stepped every optimizer step; plateau: stepped every epoch on the validation loss."""
    if cfg.train.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.train.plateau_factor, patience=cfg.train.plateau_patience
        )
    total = max(1, cfg.train.epochs * steps_per_epoch)
    warmup, floor = min(cfg.train.warmup_steps, total // 2), cfg.train.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_loader(dataset: PairedDataset, cfg: DictConfig, epoch: int) -> DataLoader:
    """The shuffle order depends only on (seed, epoch), so a resumed run sees the same batches."""
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        drop_last=len(dataset) > cfg.train.batch_size,
        num_workers=cfg.data.num_workers,
        generator=generator,
    )


def random_crop(batch: dict, size: int) -> dict:
    """One random window for the whole batch (source, target and mask alike); global torch RNG."""
    height, width = batch["source"].shape[-2:]
    if size <= 0 or size >= min(height, width):
        return batch
    top = int(torch.randint(0, height - size + 1, ()))
    left = int(torch.randint(0, width - size + 1, ()))
    window = (..., slice(top, top + size), slice(left, left + size))
    return {
        **batch,
        "source": batch["source"][window],
        "target": batch["target"][window],
        "mask": batch["mask"][window],
    }


def to_device(batch: dict, device: torch.device) -> dict:
    moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    for key in ("source", "target"):  # channels-last: ~2x faster depthwise/pointwise convs on CPU
        moved[key] = moved[key].contiguous(memory_format=torch.channels_last)
    return moved


def autocast(device: torch.device, enabled: bool):
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


# --------------------------------------------------------------------------------------------
# Train / validate / samples
# --------------------------------------------------------------------------------------------
def train_epoch(model, loader, optimizer, scheduler, scaler, losses, cfg, device, epoch) -> dict:
    model.train()
    sums, count, start = {"loss": 0.0, "l1": 0.0, "eyeliner": 0.0}, 0, time.time()
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False, disable=None)
    for batch in bar:
        batch = to_device(random_crop(batch, cfg.train.crop_size), device)
        with autocast(device, cfg.train.amp):
            pred = model(batch["source"])  # (B, 3, h, w) in [-1, 1]
        loss, terms = losses(pred, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if cfg.train.scheduler == "cosine":
            scheduler.step()
        n = batch["source"].shape[0]
        for key in sums:
            sums[key] += terms[key] * n
        count += n
        bar.set_postfix(loss=f"{terms['loss']:.4f}")
    seconds = max(time.time() - start, 1e-9)
    return {**{f"train_{k}": v / max(count, 1) for k, v in sums.items()}, "train_img_per_s": count / seconds}


@torch.no_grad()
def validate(model, dataset: PairedDataset, losses, cfg, device) -> dict:
    model.eval()
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    sums = {"loss": 0.0, "l1": 0.0, "eyeliner": 0.0, "psnr": 0.0, "ssim": 0.0}
    for batch in tqdm(loader, desc="validation", leave=False, disable=None):
        batch = to_device(batch, device)
        with autocast(device, cfg.train.amp):
            pred = model(batch["source"]).float()
        _, terms = losses(pred, batch)
        n = pred.shape[0]
        for key in ("loss", "l1", "eyeliner"):
            sums[key] += terms[key] * n
        sums["psnr"] += psnr(pred, batch["target"]).sum().item()
        sums["ssim"] += ssim(pred, batch["target"]).sum().item()
    return {f"val_{k}": v / len(dataset) for k, v in sums.items()}


def identity_psnr(dataset: PairedDataset) -> float:
    """PSNR of the untouched source against the target: the number a model has to beat."""
    values = [psnr(item["source"][None], item["target"][None]).item() for item in dataset]
    return sum(values) / len(values)


@torch.no_grad()
def save_samples(model, faces: dict, path: Path, device: torch.device) -> Path:
    """One row per fixed validation face: source | prediction | target | residual x4 (grey = no change)."""
    model.eval()
    source = faces["source"].to(device).contiguous(memory_format=torch.channels_last)
    pred = model(source).float().cpu()  # (N, 3, H, W)
    residual = amplify_residual(pred - faces["source"])
    rows = [
        [to_uint8(faces["source"][i]), to_uint8(pred[i]), to_uint8(faces["target"][i]), to_uint8(residual[i])]
        for i in range(pred.shape[0])
    ]
    grid = make_grid(rows, labels=["source", "prediction", "target", "residual x4"])
    atomic_save_image(grid, path)
    return path


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.csv (for plotting) and metrics.jsonl, rewritten whole each epoch (atomic)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(run_dir / "metrics.csv", buffer.getvalue())
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def checkpoint_state(model, optimizer, scheduler, scaler, cfg, epoch, step, history, best, elapsed) -> dict:
    return {
        "arch": ARCH,
        "model_kwargs": config_to_dict(cfg.model),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": config_to_dict(cfg),
        "epoch": epoch,
        "step": step,
        "metrics": history[-1] if history else {},
        "history": list(history),
        "best": dict(best),
        "elapsed": elapsed,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": get_rng_state(),
    }


# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    args, cfg, resume_state = parse_args(argv)
    require_dir(cfg.data.root, "dataset folder", key="data.root")  # before any output is made
    run_dir = prepare_run_dir(cfg)
    seed_everything(cfg.seed)
    device = get_device(cfg.train.device)
    train_set, val_set, data_info = build_data(cfg, run_dir)

    model = build_model(cfg).to(device).to(memory_format=torch.channels_last)
    params, macs = count_parameters(model), count_macs(model, cfg.data.size)
    sizes = model_size_kb(params)
    log.info("TinyBeauty: %d parameters, %.3f GMACs at %dx%d, %.1f KB fp32 / %.1f KB fp16 / %.1f KB int8",
             params, macs / 1e9, cfg.data.size, cfg.data.size, sizes["fp32"], sizes["fp16"], sizes["int8"])  # fmt: skip

    losses = TinyBeautyLoss.from_config(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    steps_per_epoch = len(epoch_loader(train_set, cfg, 0))
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp and device.type == "cuda")
    start_epoch, step, history, elapsed = 1, 0, [], 0.0
    best = {"val_loss": math.inf, "val_psnr": -math.inf}
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        start_epoch, step = resume_state["epoch"] + 1, resume_state["step"]
        history, best, elapsed = resume_state["history"], resume_state["best"], resume_state["elapsed"]
        set_rng_state(resume_state["rng"])
        log.info("resumed from %s at epoch %d (step %d)", args.resume, resume_state["epoch"], step)

    baseline = identity_psnr(val_set)
    log.info("identity PSNR (source vs target) on the validation split: %.2f dB", baseline)
    count = min(cfg.train.num_samples, len(val_set))
    fixed_faces = {k: torch.stack([val_set[i][k] for i in range(count)]) for k in ("source", "target")}
    wandb = WandbLogger(cfg, run_dir, name=Path(cfg.output_dir).name)
    wandb.log({"params": params, "gmacs": macs / 1e9, "identity_psnr": baseline}, step=step)

    started, last_epoch = time.time() - elapsed, start_epoch - 1
    end_epoch = cfg.train.epochs
    if cfg.train.stop_after > 0:
        end_epoch = min(end_epoch, start_epoch + cfg.train.stop_after - 1)
    for epoch in range(start_epoch, end_epoch + 1):
        loader = epoch_loader(train_set, cfg, epoch)
        lr = optimizer.param_groups[0]["lr"]
        train_metrics = train_epoch(model, loader, optimizer, scheduler, scaler, losses, cfg, device, epoch)
        step += len(loader)
        val_metrics = validate(model, val_set, losses, cfg, device)
        if cfg.train.scheduler == "plateau":
            scheduler.step(val_metrics["val_loss"])
        row = {"epoch": epoch, "step": step, "lr": lr, **train_metrics, **val_metrics, "identity_psnr": baseline,
               "seconds": time.time() - started}  # fmt: skip
        history.append(row)
        write_metrics(run_dir, history)
        log.info("epoch %d/%d  train %.4f (l1 %.4f, eyeliner %.4f)  val %.4f  PSNR %.2f dB (identity %.2f)  "
                 "SSIM %.4f  lr %.2e  %.1f img/s  %s", epoch, cfg.train.epochs, row["train_loss"], row["train_l1"],
                 row["train_eyeliner"], row["val_loss"], row["val_psnr"], baseline, row["val_ssim"], lr,
                 row["train_img_per_s"], format_seconds(row["seconds"]))  # fmt: skip
        wandb_row = {k: v for k, v in row.items() if k not in ("epoch", "step")}
        if epoch % cfg.train.sample_every == 0 or epoch == cfg.train.epochs:
            sample_path = save_samples(model, fixed_faces, run_dir / f"samples_epoch_{epoch}.png", device)
            wandb_row["samples"] = wandb.image(sample_path, caption=f"epoch {epoch}")

        improved = []
        if row["val_loss"] < best["val_loss"]:
            best["val_loss"], best["val_loss_epoch"] = row["val_loss"], epoch
            improved.append("best_loss")
        if row["val_psnr"] > best["val_psnr"]:
            best["val_psnr"], best["val_psnr_epoch"] = row["val_psnr"], epoch
            improved.append("best_psnr")
        state = checkpoint_state(model, optimizer, scheduler, scaler, cfg, epoch, step, history, best,
                                 time.time() - started)  # fmt: skip
        for kind in [*improved, "last"] + (["final"] if epoch == cfg.train.epochs else []):
            save_checkpoint(state, run_dir / CHECKPOINTS[kind])
        wandb.log(wandb_row, step=step)
        last_epoch = epoch
    wandb.finish()

    summary = write_summary(cfg, run_dir, history, best, data_info, params, macs, sizes, baseline, device, last_epoch)
    if last_epoch < cfg.train.epochs:
        log.info("stopped after epoch %d of %d (train.stop_after); continue with --resume %s",
                 last_epoch, cfg.train.epochs, run_dir / CHECKPOINTS["last"])  # fmt: skip
    return summary


def write_summary(cfg, run_dir, history, best, data_info, params, macs, sizes, baseline, device, last_epoch) -> dict:
    final = history[-1] if history else {}
    summary = {
        "stage": "tinybeauty_training",
        "data_root": str(cfg.data.root),
        **{k: v for k, v in data_info.items()},
        "image_size": cfg.data.size,
        "params": params,
        "macs": macs,
        "gmacs": round(macs / 1e9, 4),
        "size_kb": sizes,
        "identity_psnr": round(baseline, 4),
        "best_val_psnr": round(best["val_psnr"], 4) if history else None,
        "best_val_psnr_epoch": best.get("val_psnr_epoch"),
        "best_val_loss": round(best["val_loss"], 6) if history else None,
        "final_val_psnr": round(final.get("val_psnr", float("nan")), 4) if history else None,
        "final_val_ssim": round(final.get("val_ssim", float("nan")), 4) if history else None,
        "gain_db": round(best["val_psnr"] - baseline, 4) if history else None,
        "epochs": last_epoch,
        "epochs_planned": cfg.train.epochs,
        "completed": last_epoch >= cfg.train.epochs,
        "steps": final.get("step", 0),
        "seconds": round(final.get("seconds", 0.0), 1),
        "device": str(device),
        "checkpoints": {k: str(run_dir / v) for k, v in CHECKPOINTS.items() if (run_dir / v).exists()},
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    log.info("best validation PSNR %.2f dB at epoch %s (identity %.2f dB); summary.json written in %s",
             best["val_psnr"], best.get("val_psnr_epoch"), baseline, run_dir)  # fmt: skip
    return summary


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

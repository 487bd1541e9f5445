"""The real-size path without a GPU: SD 1.5 at 512 px, its memory and FLOPs, one real step on the CPU.

    python bench/sd15_path.py                                             # accounting, V100 prediction, checks (minutes)
    python -m models.sd15_shaped /work/runs/sd15_shaped                   # once: an SD-1.5-shaped folder (4.3 GB)
    python bench/sd15_path.py --folder /work/runs/sd15_shaped --cpu-run   # + one real step and one face at 512 (CPU)
    python bench/sd15_path.py --folder SD15_DIR --device cuda             # on a GPU: fp16 step time and real peak memory

Prints the JSON and writes it to bench/results/sd15_path.json (`--out`). What it holds:
- `accounting`: one DDA training step (`models.dda_optim.train_step`, configs/dda.yaml's LoRA and losses) and
  one amplification (`DDA.img2img`) at 512 on SD 1.5's configs, counted on the meta device
  (bench/meta_accounting.py): FLOPs, weights, Adam's state and the activation peak, for fp16 (the VAE in
  fp32 as `model.vae_upcast: auto` gives SD 1.5, and in fp16) and fp32, batch 1 and 2, gradient checkpointing
  off and on; amplification at batch 1, 2 and 4.
- `v100`: the predicted peak on a 16 GB V100 from it, with the assumptions written out (`V100_ASSUMPTIONS`).
- `validation`: the same accounting on the shipped prior at 128 px against a measured CPU step: the peak of
  the CPU allocator's total (torch's profiler with profile_memory records every allocation and free with the
  allocator's running total) over one step, from the step's start. Must agree within 25%.
- `loss_magnitudes`: the diffusion MSE at the visited timesteps and the pixel terms of the seed pairs, on the
  prior (128) and on `--folder` (512), for the choice of `loss.l1` (docs/decisions.md).
- `cpu_run` (`--cpu-run`): `dda_training.py` for one epoch on one seed pair at 512 in fp32 and `dda_amplify.py`
  on one face at 512, on `--folder`: wall time and peak RSS of each (refused beforehand when the free memory
  is below the accounting's estimate), the LoRA's module names against SD 1.5's, the save and load round trip
  of `pytorch_lora_weights.safetensors` (conv LoRA keys included) and the output shapes.
- `gpu_run` (`--device cuda`): the fp16 step and amplification on the GPU with the real peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from safetensors import safe_open

from bench import meta_accounting as ma
from common import REPO_ROOT, atomic_write_text, load_checkpoint, load_config, setup_logging
from data.paired import PairedDataset, scan_pairs
from errors import InputError
from losses.dda import DDALoss
from models.dda import ddim_path
from models.dda_io import DDA_MODULES_NAME, LORA_WEIGHTS_NAME, build_dda, load_dda
from models.dda_optim import build_optimizer, prepare_training, train_step

GIB = 2**30
PRIOR = REPO_ROOT / "weights" / "face_prior"
SAMPLE_FACES = REPO_ROOT / "data" / "samples" / "faces"
TEMPLATE = REPO_ROOT / "configs" / "makeup" / "classic_red_lip.yaml"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "sd15_path.json"
AGREEMENT = 0.25  # the accounting must match the measured CPU peak within this share
# What turns the accounted allocations into a peak on the card (CUDA figures are not measured here: no GPU).
V100_ASSUMPTIONS = {
    "usable_gib": 15.77,  # a 16 GB V100 as torch.cuda.get_device_properties reports it (16,160 MiB in nvidia-smi)
    "cuda_context_gib": 0.5,  # CUDA context and kernels, outside torch's allocator (0.3-0.5 GB with lazy loading)
    "workspaces_gib": 0.25,  # cuBLAS and cuDNN workspaces (inside the allocator's reserve)
    "fragmentation": 0.15,  # reserved / allocated - 1 of the memory that changes within a step (the activations)
    "attention": "memory-efficient SDPA kernel (sm70: torch's flash kernel needs sm80+)",
}
# RSS of a stage process beyond what the accounting counts: Python, torch, diffusers, transformers,
# MediaPipe, the tokenizer and the allocator's slack (an assumption, checked against the measured peak RSS).
PROCESS_OVERHEAD_GIB = 1.5


# --------------------------------------------------------------------------------------------
# Accounting at 512 and the V100 prediction
# --------------------------------------------------------------------------------------------
def dda_config(resolution: int, *overrides: str):
    return load_config(REPO_ROOT / "configs" / "dda.yaml", [f"train.resolution={resolution}", *overrides])


def v100_prediction(acc: ma.Accounting) -> dict:
    a = V100_ASSUMPTIONS
    static = sum(acc.weights.values()) + acc.trainable_state
    reserved = static + acc.activation_peak * (1 + a["fragmentation"]) + a["workspaces_gib"] * GIB
    device = reserved + a["cuda_context_gib"] * GIB
    return {
        "allocated_gib": round(acc.total() / GIB, 2),
        "reserved_gib": round(reserved / GIB, 2),
        "device_gib": round(device / GIB, 2),
        "fits_16gb": device / GIB <= a["usable_gib"],
        "headroom_gib": round(a["usable_gib"] - device / GIB, 2),
    }


TRAINING_CASES = [  # (precision, model.vae_upcast): fp16 as SD 1.5 gets it (VAE in fp32), fp16 throughout, fp32
    ("fp16", "auto"),
    ("fp16", "false"),
    ("fp32", "auto"),
]


def accounting_matrix(resolution: int = 512) -> dict:
    cfg = dda_config(resolution, "wandb.mode=disabled")
    training = []
    for precision, upcast in TRAINING_CASES:
        for batch_size in (1, 2):
            for checkpointing in (False, True):
                base = ma.meta_base_sd15(torch.float16 if precision == "fp16" else torch.float32)
                started = time.perf_counter()
                acc = ma.account_training_step(
                    base,
                    cfg,
                    batch_size=batch_size,
                    precision=precision,
                    gradient_checkpointing=checkpointing,
                    vae_upcast=upcast,
                )
                row = {"precision": precision, "vae_upcast": upcast, "batch_size": batch_size}
                row.update(gradient_checkpointing=checkpointing, **acc.as_dict(), v100=v100_prediction(acc))
                row["accounting_seconds"] = round(time.perf_counter() - started, 1)
                training.append(row)
                print(f"training {precision} upcast={upcast} batch {batch_size} gc={checkpointing}: "
                      f"{row['allocated_peak_gib']} GiB, {row['tflops']} TFLOP", flush=True)  # fmt: skip
    amplification = []
    for precision in ("fp16", "fp32"):
        for batch_size in (1, 2, 4):
            base = ma.meta_base_sd15(torch.float16 if precision == "fp16" else torch.float32)
            acc = ma.account_amplification(base, cfg, batch_size=batch_size)
            amplification.append({"precision": precision, "batch_size": batch_size, **acc.as_dict(),
                                  "v100": v100_prediction(acc)})  # fmt: skip
    return {
        "resolution": resolution,
        "lora": {"rank": int(cfg.lora.rank), "target_modules": list(cfg.lora.target_modules)},
        "diffusion": {"strength": float(cfg.diffusion.strength), "num_steps": int(cfg.diffusion.num_steps)},
        "training_step": training,
        "amplification_batch": amplification,
    }


# --------------------------------------------------------------------------------------------
# Validation on the prior: predicted against measured on the CPU
# --------------------------------------------------------------------------------------------
def measured_activation_peak(dda, cfg, batch: dict) -> int:
    """The peak of the CPU allocator's total over one train_step after a first (Adam's state) step, from its start."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    optimizer = build_optimizer(dda, float(cfg.train.lr), float(cfg.train.scalar_lr))
    loss_fn, scaler = DDALoss.from_config(cfg), torch.amp.GradScaler("cpu", enabled=False)
    train_step(dda, batch, loss_fn, optimizer, scaler, float(cfg.train.grad_clip), False)
    optimizer.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(dda, batch, loss_fn, optimizer, scaler, float(cfg.train.grad_clip), False)
    totals = []

    def walk(nodes):
        for node in nodes:
            if node.typed[0] == _EventType.Allocation:
                totals.append((node.start_time_ns, node.typed[1].total_allocated))
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    return max(total for _, total in sorted(totals))


def validate_on_prior(pairs_128: Path) -> dict:
    cfg = dda_config(128, f"model.pretrained={PRIOR}", "wandb.mode=disabled")
    dataset = PairedDataset(scan_pairs(pairs_128).pairs, 128)
    rows = []
    for batch_size in (1, 2):
        for checkpointing in (False, True):
            predicted = ma.account_training_step(
                ma.meta_base_folder(PRIOR, torch.float32),
                cfg,
                batch_size=batch_size,
                precision="fp32",
                gradient_checkpointing=checkpointing,
                target="cpu",
            )
            torch.manual_seed(0)
            dda = prepare_training(build_dda(cfg), checkpointing).train()
            items = [dataset[i] for i in range(batch_size)]
            batch = {k: torch.stack([item[k] for item in items]) for k in ("source", "target", "mask", "has_mask")}
            measured = measured_activation_peak(dda, cfg, batch)
            error = predicted.activation_peak / measured - 1
            rows.append({
                "batch_size": batch_size,
                "gradient_checkpointing": checkpointing,
                "predicted_activation_mib": round(predicted.activation_peak / 2**20, 1),
                "measured_activation_mib": round(measured / 2**20, 1),
                "relative_error": round(error, 4),
                "within_25_percent": abs(error) <= AGREEMENT,
            })  # fmt: skip
            print(f"validation batch {batch_size} gc={checkpointing}: predicted {rows[-1]['predicted_activation_mib']} "
                  f"MiB, measured {rows[-1]['measured_activation_mib']} MiB ({error:+.1%})", flush=True)  # fmt: skip
    return {
        "model": "weights/face_prior at 128 px, fp32, CPU",
        "method": "measured: the CPU allocator's running total in torch.profiler (profile_memory=True) over one "
        "train_step after a first one, peak minus the step's start; predicted: the meta-device accounting with "
        "the CPU attention kernel",
        "cases": rows,
        "all_within_25_percent": all(r["within_25_percent"] for r in rows),
    }


# --------------------------------------------------------------------------------------------
# Loss magnitudes (for loss.l1 and loss.eyeliner)
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def diffusion_mse_by_timestep(dda, source: torch.Tensor, target: torch.Tensor, seed: int) -> dict[str, float]:
    """The noise MSE of the (LoRA-initial, i.e. base) UNet at each visited timestep of the DDIM path source -> target."""
    z_source, z_target = dda.encode(source).float(), dda.encode(target).float()
    visited = dda.training_timesteps()
    alphas = dda.noise_scheduler.alphas_cumprod
    noise = torch.randn(z_source.shape, generator=torch.Generator().manual_seed(seed)).to(z_source)
    x0, eps = ddim_path(z_source, z_target, noise, float(alphas[visited[0]]), dda.final_alpha())
    text = dda.encode_prompt()
    mse = {}
    for t in visited.tolist():
        a_t = float(alphas[t])
        noisy = (a_t**0.5 * x0 + (1 - a_t) ** 0.5 * eps).to(dda.dtype)
        pred = dda.predict_noise(noisy, torch.tensor([t], device=dda.device), text).float()
        mse[str(t)] = round(float(((pred - eps) ** 2).mean()), 5)
    return mse


def pair_terms(source, target, mask, cfg) -> dict[str, float]:
    """The L1 and eyeliner terms (weight 1) an unchanged source pays against its target: the makeup's own size."""
    loss = DDALoss(l1=1.0, eyeliner=1.0, region_weights=dict(cfg.loss.region_weights))
    weights = loss.region_table[mask].unsqueeze(1)
    has_mask = torch.ones(source.shape[0], dtype=torch.bool)
    return {
        "l1": round(float(loss.l1(source, target, pixel_weight=weights)), 6),
        "eyeliner": round(float(loss.eyeliner(source, target, mask, has_mask)), 6),
    }


def loss_magnitudes(folder: Path, pairs: Path, resolution: int, training_terms: bool, mse_pairs: int = 5) -> dict:
    """Per seed pair: the pair's own L1 and eyeliner terms, and for the first `mse_pairs` the diffusion MSE at the
    visited timesteps; with `training_terms`, also the loss terms of training_forward at the start (a random
    visited timestep, the LoRA as initialised: the base model)."""
    cfg = dda_config(resolution, f"model.pretrained={folder}", "wandb.mode=disabled")
    torch.manual_seed(0)
    dda = build_dda(cfg).eval()
    dataset = PairedDataset(scan_pairs(pairs).pairs, resolution)
    loss_fn = DDALoss(l1=1.0, eyeliner=1.0, region_weights=dict(cfg.loss.region_weights))
    per_pair = []
    for index in range(len(dataset)):
        item = dataset[index]
        source, target, mask = item["source"][None], item["target"][None], item["mask"][None]
        row = {"pair": item["name"], "pair_terms": pair_terms(source, target, mask, cfg)}
        if index < mse_pairs:
            row["diffusion_mse"] = diffusion_mse_by_timestep(dda, source, target, seed=index)
        if training_terms and index < mse_pairs:
            with torch.no_grad():
                out = dda.training_forward(source, target, mask, generator=torch.Generator().manual_seed(index))
                terms = loss_fn(out, target, mask, torch.ones(1, dtype=torch.bool))
            row["training_terms_at_start"] = {k: round(float(v), 6) for k, v in terms.items() if k != "total"}
            row["training_terms_at_start"]["timestep"] = int(out["timesteps"][0])
        per_pair.append(row)
        print(f"loss magnitudes {folder.name} {item['name']}: {row}", flush=True)
    with_mse = [r for r in per_pair if "diffusion_mse" in r]
    summary = {
        "diffusion_mse_by_timestep": {
            t: round(statistics.mean(r["diffusion_mse"][t] for r in with_mse), 4) for t in with_mse[0]["diffusion_mse"]
        },  # fmt: skip
        "pair_l1": round(statistics.mean(r["pair_terms"]["l1"] for r in per_pair), 5),
        "pair_eyeliner": round(statistics.mean(r["pair_terms"]["eyeliner"] for r in per_pair), 5),
    }
    summary["mse_over_l1"] = round(
        statistics.mean(summary["diffusion_mse_by_timestep"].values()) / summary["pair_l1"], 1
    )
    return {"model": str(folder), "resolution": resolution, "pairs": len(per_pair), "mse_pairs": len(with_mse),
            "mean": summary, "per_pair": per_pair}  # fmt: skip


# --------------------------------------------------------------------------------------------
# One real step and one amplified face on the CPU
# --------------------------------------------------------------------------------------------
def make_seed_pairs(size: int, out: Path, num: int = 5) -> Path:
    """Seed pairs from the bundled faces and `classic_red_lip` (stage 1), reused when already there."""
    if not (out / "target").is_dir():
        command = [sys.executable, str(REPO_ROOT / "make_seed_pairs.py"), "--faces", str(SAMPLE_FACES),
                   "--template", str(TEMPLATE), "--num", str(num), "--size", str(size), "--output", str(out)]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, env=one_thread_env(1))
    return out


def one_thread_env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def check_free_memory(needed_bytes: float, what: str) -> dict:
    """Refuse before starting when the machine's available memory is below `needed_bytes` (an InputError that
    says how much is needed, for what, and how much there is)."""
    available = psutil.virtual_memory().available
    if available < needed_bytes:
        raise InputError(
            f"{what} needs about {needed_bytes / GIB:.1f} GiB of RAM (the meta-device accounting plus "
            f"{PROCESS_OVERHEAD_GIB} GiB for the process), but only {available / GIB:.1f} GiB is available: free "
            "memory (or close other jobs) and run again, or leave out --cpu-run"
        )
    return {"needed_gib": round(needed_bytes / GIB, 2), "available_gib": round(available / GIB, 2)}


def run_measured(command: list[str], log_path: Path, threads: int) -> dict:
    """Run a stage as a child process: wall seconds and the child's peak RSS (its own rusage, from wait4)."""
    started = time.perf_counter()
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=one_thread_env(threads))
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    result = {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 2),  # ru_maxrss is in KiB on Linux
        "returncode": process.returncode,
        "log": str(log_path),
    }
    if process.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(command[:2])} failed (exit {process.returncode}); log {log_path}:\n{tail}")
    return result


def expected_lora_modules(targets: list[str]) -> set[str]:
    """The modules of SD 1.5's UNet a LoRA with these module-name suffixes sits on (peft's matching rule)."""
    from models import sd15_shaped

    unet = sd15_shaped.build_unet("meta")
    return {
        f"unet.{name}"
        for name, module in unet.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
        and any(name == t or name.endswith(f".{t}") for t in targets)
    }


def lora_checks(run_dir: Path, folder: Path, targets: list[str], work: Path) -> dict:
    """Module names against SD 1.5's, conv LoRA keys and shapes, and the safetensors save/load round trip."""
    with safe_open(str(run_dir / LORA_WEIGHTS_NAME), framework="pt") as file:
        shapes = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}  # noqa: SIM118
    modules = {key.rsplit(".lora_", 1)[0] for key in shapes}
    expected = expected_lora_modules(targets)
    conv_keys = sorted(k for k in shapes if ".resnets." in k and (".conv1." in k or ".conv2." in k))
    example = next(k for k in conv_keys if k.endswith("conv1.lora_A.weight"))
    # The round trip: the LoRA folder alone (as any diffusers pipeline reads it), loaded into a fresh DDA.
    lora_only = work / "lora_only"
    lora_only.mkdir(parents=True, exist_ok=True)
    for name in (LORA_WEIGHTS_NAME, DDA_MODULES_NAME):
        shutil.copy2(run_dir / name, lora_only / name)
    saved = load_checkpoint(run_dir / "dda_final.pt")["dda"]["lora"]
    reloaded = load_dda(lora_only, pretrained=str(folder)).lora_state_dict()
    differing = [k for k in saved if not torch.equal(saved[k], reloaded.get(k, torch.empty(0)))]
    return {
        "lora_modules": len(modules),
        "expected_sd15_modules": len(expected),
        "names_match_sd15": modules == expected,
        "attention_modules": sum(".attentions." in m for m in modules),
        "resnet_conv_modules": sum(".resnets." in m for m in modules),
        "conv_lora_keys": len(conv_keys),
        "example_conv_key": example,
        "example_conv_shape": list(shapes[example]),
        "lora_parameters": sum(int(torch.Size(s).numel()) for s in shapes.values()),
        "round_trip_tensors": len(saved),
        "round_trip_bit_identical": not differing and set(saved) == set(reloaded),
    }


def image_sizes(folder: Path) -> dict[str, list[int]]:
    from PIL import Image

    sizes = {}
    for path in sorted(folder.rglob("*.png")):
        with Image.open(path) as image:
            sizes[str(path.relative_to(folder))] = [image.width, image.height]
    return sizes


def cpu_run(folder: Path, work: Path, threads: int, accounting: dict) -> dict:
    """dda_training.py (1 epoch, 1 pair, 512, fp32) and dda_amplify.py (1 face) on `folder`, measured."""
    pairs_512 = make_seed_pairs(512, work / "seed_pairs_512")
    train_case = next(r for r in accounting["training_step"] if r["precision"] == "fp32" and r["batch_size"] == 1
                      and not r["gradient_checkpointing"])  # fmt: skip
    amplify_case = next(
        r for r in accounting["amplification_batch"] if r["precision"] == "fp32" and r["batch_size"] == 1
    )
    result = {"threads": threads}
    needed = (train_case["allocated_peak_gib"] + PROCESS_OVERHEAD_GIB) * GIB
    result["training_memory_check"] = check_free_memory(needed, "the CPU training step at 512 (fp32)")
    run_dir = work / "dda_model"
    shutil.rmtree(run_dir, ignore_errors=True)
    train_command = [
        sys.executable, str(REPO_ROOT / "dda_training.py"), f"model.pretrained={folder}", f"data.root={pairs_512}",
        "data.num_pairs=1", "train.epochs=1", "train.resolution=512", "model.mixed_precision=no", "train.device=cpu",
        f"output_dir={run_dir}", "wandb.mode=disabled",
    ]  # fmt: skip
    print("cpu run: dda_training.py at 512 (minutes) ...", flush=True)
    training = run_measured(train_command, work / "dda_training.log", threads)
    summary = json.loads((run_dir / "summary.json").read_text())
    training.update(
        seconds_per_step=summary["seconds_per_step"],
        steps=summary["steps"],
        final_loss=summary["final_loss"],
        trainable_params=summary["trainable_params"],
        predicted_peak_rss_gib=round(needed / GIB, 2),
        outputs=sorted(p.name for p in run_dir.iterdir()),
        sample_sizes=image_sizes(run_dir),
    )
    result["training"] = training
    print(f"cpu run: training {training['seconds']} s, peak RSS {training['peak_rss_gib']} GiB", flush=True)

    needed = (amplify_case["allocated_peak_gib"] + PROCESS_OVERHEAD_GIB) * GIB
    result["amplify_memory_check"] = check_free_memory(needed, "the CPU amplification at 512 (fp32)")
    faces = work / "one_face"
    faces.mkdir(parents=True, exist_ok=True)
    face = sorted(SAMPLE_FACES.glob("*.jpg"))[1]  # [0] is stage 2's held-out sample face
    shutil.copy2(face, faces / face.name)
    amplified = work / "amplified"
    shutil.rmtree(amplified, ignore_errors=True)
    amplify_command = [
        sys.executable, str(REPO_ROOT / "dda_amplify.py"), f"checkpoint={run_dir / 'dda_final.pt'}",
        f"input_dir={faces}", f"output_dir={amplified}", "batch_size=1", "wandb.mode=disabled",
    ]  # fmt: skip
    print("cpu run: dda_amplify.py at 512 ...", flush=True)
    amplification = run_measured(amplify_command, work / "dda_amplify.log", threads)
    amp_summary = json.loads((amplified / "summary.json").read_text())
    amplification.update(
        pairs=amp_summary["pairs"],
        dda_seconds_per_image=amp_summary["dda_seconds_per_image"],
        resolution=amp_summary["resolution"],
        predicted_peak_rss_gib=round(needed / GIB, 2),
        pair_sizes={k: v for k, v in image_sizes(amplified).items() if k.split("/")[0] in ("source", "target", "mask")},
    )
    result["amplification"] = amplification
    print(f"cpu run: amplification {amplification['seconds']} s, peak RSS {amplification['peak_rss_gib']} GiB")
    result["lora"] = lora_checks(run_dir, folder, list(dda_config(512).lora.target_modules), work)
    return result


# --------------------------------------------------------------------------------------------
# On a GPU (--device cuda)
# --------------------------------------------------------------------------------------------
def gpu_run(folder: Path, steps: int = 10) -> dict:
    """The fp16 training step (GradScaler, the VAE as model.vae_upcast says) and amplification on CUDA at 512."""
    if not torch.cuda.is_available():
        return {"measured": False, "reason": "no CUDA device on this machine"}
    device = torch.device("cuda")
    cfg = dda_config(512, f"model.pretrained={folder}", "wandb.mode=disabled")
    result = {"measured": True, "device": torch.cuda.get_device_name(0), "steps_timed": steps, "training": []}
    batch = ma.meta_batch(1, 512)
    batch["source"].uniform_(-1, 1)
    batch["target"].uniform_(-1, 1)
    for checkpointing in (False, True):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        dda = prepare_training(build_dda(cfg, device=device, dtype=torch.float16), checkpointing).train()
        optimizer = build_optimizer(dda, float(cfg.train.lr), float(cfg.train.scalar_lr))
        scaler, loss_fn = torch.amp.GradScaler("cuda"), DDALoss.from_config(cfg).to(device)
        for _ in range(2):
            train_step(dda, batch, loss_fn, optimizer, scaler, float(cfg.train.grad_clip), True)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            train_step(dda, batch, loss_fn, optimizer, scaler, float(cfg.train.grad_clip), True)
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        result["training"].append({
            "gradient_checkpointing": checkpointing,
            "seconds_per_step": round((time.perf_counter() - started) / steps, 4),
            "max_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
            "max_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
            "device_used_now_gib": round((total - free) / GIB, 2),
        })  # fmt: skip
        del dda, optimizer
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    dda = build_dda(cfg, device=device, dtype=torch.float16).eval()
    generators = [torch.Generator().manual_seed(0)]
    dda.img2img(batch["source"], batch["mask"], generator=generators)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(3):
        dda.img2img(batch["source"], batch["mask"], generator=generators)
    torch.cuda.synchronize()
    result["amplification_batch_1"] = {
        "seconds_per_image": round((time.perf_counter() - started) / 3, 4),
        "max_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
        "max_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
    }
    return result


# --------------------------------------------------------------------------------------------
def machine() -> dict:
    memory = psutil.virtual_memory()
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "ram_gib": round(memory.total / GIB, 1),
        "available_gib_at_start": round(memory.available / GIB, 1),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None, help="an SD-1.5-shaped or SD 1.5 folder (diffusers)")
    parser.add_argument("--cpu-run", action="store_true", help="one real step and one face at 512 on the CPU")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: also measure on the GPU")
    parser.add_argument("--threads", type=int, default=1, help="torch threads here and in the stages (default 1)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON (default %(default)s)")
    parser.add_argument(
        "--keep-runs", action="store_true", help="without --cpu-run: keep the CPU run and SD loss figures of --out"
    )
    args = parser.parse_args(argv)
    if (args.cpu_run or args.device == "cuda") and args.folder is None:
        parser.error("--cpu-run and --device cuda need --folder (python -m models.sd15_shaped DIR writes one)")
    setup_logging()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="sd15_path_"))
    started = time.perf_counter()
    report = {"machine": machine(), "threads": args.threads, "v100_assumptions": V100_ASSUMPTIONS}
    report["accounting"] = accounting_matrix()
    pairs_128 = make_seed_pairs(128, work / "seed_pairs_128")
    report["validation"] = validate_on_prior(pairs_128)
    report["loss_magnitudes"] = {"prior": loss_magnitudes(PRIOR, pairs_128, 128, training_terms=True)}
    if args.cpu_run:
        report["cpu_run"] = cpu_run(args.folder, work, args.threads, report["accounting"])
    if args.keep_runs and not args.cpu_run and args.out.is_file():  # the hour-long parts of an earlier run
        earlier = json.loads(args.out.read_text())
        for key in ("cpu_run", "loss_magnitudes"):
            if key in earlier:
                report.setdefault("kept_from_earlier_run", []).append(key)
        report["cpu_run"] = earlier.get("cpu_run")
        report["loss_magnitudes"]["sd15_shaped"] = earlier.get("loss_magnitudes", {}).get("sd15_shaped")
    elif args.folder is not None:
        pairs_512 = make_seed_pairs(512, work / "seed_pairs_512")
        # two pairs: three UNet passes and two VAE encodes each at 512 take minutes on a CPU core
        magnitudes = loss_magnitudes(args.folder, pairs_512, 512, training_terms=False, mse_pairs=2)
        report["loss_magnitudes"]["sd15_shaped"] = magnitudes
    report["gpu_run"] = gpu_run(args.folder) if args.device == "cuda" else {"measured": False, "reason": "no GPU lent"}
    report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=1)
    print(text)
    atomic_write_text(args.out, text + "\n")
    return report


if __name__ == "__main__":
    main()

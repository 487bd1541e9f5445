"""TinyBeauty speed: parameters, MACs, latency (PyTorch, ONNX Runtime fp32 and int8), training throughput.

    python bench/tinybeauty_bench.py
    python bench/tinybeauty_bench.py --checkpoint tinybeauty_model/tinybeauty_best_psnr.pt --runs 50

Latency is the median of `--runs` (>= 30) timed runs after warm-up, at batch 1 and per image at batch
32, at the model's resolution (256 by default). Without a checkpoint the default config's untrained
model is timed (same layers, same speed). int8 is calibrated on real faces when `--data` (default:
../shared/data/pairs_style1) exists, on random images otherwise. The last line printed is the JSON;
the machine's load average is in it, because a shared machine makes every number slower. Training
throughput is the timed model's architecture (the checkpoint's, when given) at the default config's
batch size and `train.crop_size`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
import torch

from common import config_to_dict, count_parameters, from_uint8, get_device, load_checkpoint, load_config, setup_logging
from data.io import list_images, read_rgb, resize_rgb
from deploy.onnx_export import export_onnx, ort_session, quantize_int8
from losses.tinybeauty import TinyBeautyLoss
from models.tinybeauty import (
    build_tinybeauty,
    count_macs,
    load_tinybeauty,
)

REPO = Path(__file__).resolve().parents[1]

DEFAULT_CONFIG = REPO / "configs" / "tinybeauty.yaml"


def time_it(fn, runs: int, warmup: int = 3) -> tuple[float, float]:
    """Median wall time and median process CPU time of `fn()`, in milliseconds.

    On a shared machine the wall time includes waiting for a core; the CPU time (all threads of this
    process) does not, so with `--threads 1` it is close to what an idle machine's wall time would be.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return median(wall), median(cpu)


def latency(run_batch, size: int, runs: int, batch_runs: int) -> dict:
    one = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    many = np.random.default_rng(1).uniform(-1, 1, (32, 3, size, size)).astype(np.float32)
    wall1, cpu1 = time_it(lambda: run_batch(one), runs)
    wall32, cpu32 = time_it(lambda: run_batch(many), batch_runs, warmup=1)
    return {
        "batch1_ms": round(wall1, 3),
        "batch32_ms_per_image": round(wall32 / 32, 3),
        "batch1_cpu_ms": round(cpu1, 3),
        "batch32_cpu_ms_per_image": round(cpu32 / 32, 3),
    }


def torch_runner(model: torch.nn.Module, device: torch.device):
    model = model.to(device).eval().to(memory_format=torch.channels_last)

    @torch.no_grad()
    def run(images: np.ndarray) -> None:
        x = torch.from_numpy(images).to(device).contiguous(memory_format=torch.channels_last)
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def ort_runner(path: Path, threads: int | None):
    session = ort_session(path, threads)  # ORT_ENABLE_ALL; intra-op threads: all cores unless --threads
    return lambda images: session.run(None, {"source": images})


def training_throughput(cfg, model: torch.nn.Module, device: torch.device, steps: int) -> float:
    """Images per second of full optimizer steps of `model` at the config's batch size and crop."""
    model = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last).train()
    losses, optimizer = TinyBeautyLoss.from_config(cfg), torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    crop = cfg.train.crop_size or cfg.data.size
    batch = {
        "source": torch.rand(cfg.train.batch_size, 3, crop, crop, device=device) * 2 - 1,
        "target": torch.rand(cfg.train.batch_size, 3, crop, crop, device=device) * 2 - 1,
        "mask": torch.ones(cfg.train.batch_size, crop, crop, dtype=torch.long, device=device),
        "has_mask": torch.ones(cfg.train.batch_size, dtype=torch.bool, device=device),
    }
    batch["source"] = batch["source"].contiguous(memory_format=torch.channels_last)

    def step() -> None:
        loss, _ = losses(model(batch["source"]), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return cfg.train.batch_size * steps / (time.perf_counter() - start)


def calibration_faces(data: Path, size: int, count: int = 32) -> tuple[np.ndarray, str]:
    folder = data / "source"
    if folder.is_dir() and list_images(folder):
        faces = [from_uint8(np.array(resize_rgb(read_rgb(p), size))) for p in list_images(folder)[:count]]
        return torch.stack(faces).numpy(), str(folder)
    return np.random.default_rng(0).uniform(-1, 1, (count, 3, size, size)).astype(np.float32), "random"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="tinybeauty_*.pt (default: untrained default config)")
    parser.add_argument("--data", default="../shared/data/pairs_style1", help="faces for int8 calibration")
    parser.add_argument("--runs", type=int, default=30, help="timed runs at batch 1 (>= 30)")
    parser.add_argument("--batch-runs", type=int, default=5, help="timed runs at batch 32")
    parser.add_argument("--train-steps", type=int, default=5, help="timed optimizer steps for throughput")
    parser.add_argument("--threads", type=int, default=None, help="ORT/PyTorch threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.runs < 30:
        raise SystemExit("error: --runs must be at least 30 (the median of 30 runs is the reported latency)")
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device("auto")
    if args.checkpoint:
        state = load_checkpoint(args.checkpoint)
        cfg = load_config(DEFAULT_CONFIG, [f"data.size={state['config']['data']['size']}"])
        model = load_tinybeauty(state)
    else:
        cfg = load_config(DEFAULT_CONFIG)
        model = build_tinybeauty(config_to_dict(cfg.model)).eval()
    size = cfg.data.size
    result = {
        "params": count_parameters(model),
        "macs": count_macs(model, size),
        "image_size": size,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "checkpoint": args.checkpoint,
        "model": {key: getattr(model, key) for key in ("stem", "skip", "widths")},
        # what tinybeauty_export.ort_session sets: every graph optimisation, one intra-op thread per core
        "ort_session": {
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "intra_op_num_threads": args.threads or os.cpu_count(),
        },
    }
    result["pytorch"] = latency(torch_runner(model, device), size, args.runs, args.batch_runs)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "tinybeauty_fp32.onnx", size)
        calib, calib_source = calibration_faces(Path(args.data), size)
        int8 = quantize_int8(fp32, Path(tmp) / "tinybeauty_int8.onnx", calib)
        result["int8_calibration"] = calib_source
        result["ort_fp32"] = latency(ort_runner(fp32, args.threads), size, args.runs, args.batch_runs)
        result["ort_int8"] = latency(ort_runner(int8, args.threads), size, args.runs, args.batch_runs)
        result["onnx_kb"] = {"fp32": round(fp32.stat().st_size / 1024, 1), "int8": round(int8.stat().st_size / 1024, 1)}
    result["train_img_per_s"] = round(training_throughput(cfg, model, device, args.train_steps), 2)
    result["train_setting"] = {"batch_size": cfg.train.batch_size, "crop_size": cfg.train.crop_size}
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

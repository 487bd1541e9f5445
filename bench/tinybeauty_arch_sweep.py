"""TinyBeauty design sweep: train each design on one split, then score and time them all in one run.

    python bench/tinybeauty_arch_sweep.py --out /work/runs/tb_sweep                      # every design, 50 epochs
    python bench/tinybeauty_arch_sweep.py --out /work/runs/tb_sweep --designs previous_default,chosen --epochs 12
    python bench/tinybeauty_arch_sweep.py --out /work/runs/tb_sweep --jobs 2 --threads 1  # two trainings at once
    python bench/tinybeauty_arch_sweep.py --out /work/runs/tb_sweep --no-train            # score + time what is there

Each design is a list of `key=value` overrides of configs/tinybeauty.yaml (DESIGNS below; `previous_default`
is the config before this sweep, `chosen_charb` the one it picked), trained by the real stage script
(`tinybeauty_training.py`, a subprocess) into OUT/NAME on the same data, split (seed) and epochs. A finished
design is not trained again; a stopped one resumes from its tinybeauty_last.pt. Then, all in this one process
so that every design sees the same machine:
- on the validation split: PSNR (as the stage reports it), **lipstick** = the share of the target's change
  that the prediction applies inside the lip mask (projection: sum((pred - src) . (tgt - src)) /
  sum((tgt - src)^2), 1 = the whole lipstick, 0 = none; `lip_abs_ratio` is mean |pred - src| / mean
  |tgt - src| there), eye-region L1 (grey levels, mask label 1), makeup-residual R^2 over the face;
- parameters, MACs at 256, ONNX int8 size;
- ONNX Runtime fp32 latency at batch 1 and PyTorch training throughput (batch and crop of each design's
  config), timed in interleaved rounds (every design once per round, the median over rounds), so that
  a change in the machine's load falls on every design alike; both also relative to `previous_default`.
The last line printed is the JSON; OUT/sweep.json and OUT/sweep.md (the README's table) are written too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
import torch

from bench.tinybeauty_bench import training_throughput
from common import atomic_write_text, count_parameters, load_checkpoint, load_config, psnr, setup_logging
from data.paired import EYE, LIPS, SKIN, PairedDataset, scan_pairs
from deploy.onnx_export import export_onnx, ort_session, quantize_int8
from models.tinybeauty import count_macs, load_tinybeauty

REPO = Path(__file__).resolve().parents[1]

DEFAULT_CONFIG = REPO / "configs" / "tinybeauty.yaml"
STAGE = REPO / "tinybeauty_training.py"

# name -> (what it tries, overrides of configs/tinybeauty.yaml). Every design runs on the same split and
# epochs; `--epochs` sets train.epochs for all of them. PREVIOUS pins the config before this sweep (the
# `previous_default` row), so every row stays reproducible whatever configs/tinybeauty.yaml says now.
PREVIOUS = ["train.lr=1e-3", "loss.eyeliner=0.5", "loss.region_weights.eyes=1", "loss.region_weights.lips=1",
            "loss.region_weights.skin=1", "loss.charbonnier_eps=0", "model.bottleneck_dilation=1"]  # fmt: skip
LOSS = [*PREVIOUS, "loss.eyeliner=0.05", "loss.region_weights.lips=4", "loss.region_weights.eyes=2"]
BASE = [*LOSS, "train.lr=3e-3"]  # the best loss and rate of the first round; the architectures build on it
CHOSEN = [*LOSS, "loss.region_weights.lips=8", "loss.region_weights.eyes=4", "model.bottleneck_dilation=2",
          "train.lr=6e-3"]  # fmt: skip
DESIGNS: dict[str, tuple[str, list[str]]] = {
    "previous_default": ("the config before this sweep (L1 + eyeliner 0.5, lr 1e-3)", PREVIOUS),
    "eyeliner0.05": ("eyeliner weight 0.5 -> 0.05", [*PREVIOUS, "loss.eyeliner=0.05"]),
    "eyeliner0": ("no eyeliner term", [*PREVIOUS, "loss.eyeliner=0"]),
    "regions": ("eyeliner 0.05, L1 x4 on lips, x2 on eyes", LOSS),
    "regions_charb": ("regions + Charbonnier 0.02", [*LOSS, "loss.charbonnier_eps=0.02"]),
    "regions_lr3e-3": ("regions + lr 3e-3", BASE),
    "regions_lr6e-3": ("regions + lr 6e-3", [*LOSS, "train.lr=6e-3"]),
    "regions_lr1e-2": ("regions + lr 1e-2", [*LOSS, "train.lr=1e-2"]),
    "lips8": (
        "regions_lr3e-3 with L1 x8 on lips, x4 on eyes",
        [*BASE, "loss.region_weights.lips=8", "loss.region_weights.eyes=4"],
    ),
    "dilated": ("regions_lr3e-3 + dilation 2 in the bottleneck", [*BASE, "model.bottleneck_dilation=2"]),
    "deep4": (
        "regions_lr3e-3 + a 4th level [16,32,48,64], bottleneck 96",
        [*BASE, "model.widths=[16,32,48,64]", "model.bottleneck=96"],
    ),
    "wide_add": (
        "regions_lr3e-3 + widths [24,48,64], additive skips",
        [*BASE, "model.widths=[24,48,64]", "model.skip=add"],
    ),
    "batchnorm": ("regions_lr3e-3 + BatchNorm (folded into the convs in ONNX)", [*BASE, "model.norm=batch"]),
    "chosen": ("lips8 + dilated + lr 6e-3", CHOSEN),
    "chosen_charb": ("chosen + Charbonnier 0.05: configs/tinybeauty.yaml now", [*CHOSEN, "loss.charbonnier_eps=0.05"]),
    "chosen_bn": ("chosen + BatchNorm", [*CHOSEN, "model.norm=batch"]),
}


def thread_env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_design(name: str, overrides: list[str], args, log_file) -> Path:
    """Train one design with the stage script (resuming a stopped run); returns its run folder."""
    run_dir = Path(args.out) / name
    summary = run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("completed"):
        return run_dir
    keys = [f"data.root={args.data}", f"output_dir={run_dir}", f"train.epochs={args.epochs}", "wandb.mode=disabled"]
    last = run_dir / "tinybeauty_last.pt"
    command = [sys.executable, str(STAGE)]
    command += ["--resume", str(last)] if last.is_file() else []
    command += keys + overrides
    print(f"[sweep] training {name}: {' '.join(overrides) or '(config unchanged)'}", file=sys.stderr, flush=True)
    with open(log_file, "a") as log:
        subprocess.run(
            command, check=True, stdout=log, stderr=subprocess.STDOUT, env=thread_env(args.threads), cwd=REPO
        )
    return run_dir


def train_all(names: list[str], args) -> None:
    """`--jobs` trainings at a time, each with `--threads` threads (small convs scale badly past one core)."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    pending, running = list(names), []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            command = [sys.executable, __file__, "--out", args.out, "--data", args.data, "--epochs", str(args.epochs),
                       "--threads", str(args.threads), "--designs", name, "--train-only"]  # fmt: skip
            running.append((name, subprocess.Popen(command, env=thread_env(args.threads))))
        time.sleep(2)
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                if item[1].returncode != 0:
                    print(f"[sweep] {item[0]} failed (exit {item[1].returncode}); see {args.out}/{item[0]}.log")


@torch.no_grad()
def score(state: dict, run_dir: Path, data_root: str) -> dict:
    """Quality figures of a loaded checkpoint on its run's validation split (run_dir/split.json)."""
    model = load_tinybeauty(state)
    size = state["config"]["data"]["size"]
    split = json.loads((run_dir / "split.json").read_text())
    pairs = {p.name: p for p in scan_pairs(data_root, verify=False).pairs}
    dataset = PairedDataset([pairs[n] for n in split["val"]], size)
    sums = {k: 0.0 for k in ("psnr", "lip_dot", "lip_tt", "lip_pred_abs", "lip_tgt_abs", "eye_abs", "eye_px",
                             "face_sse")}  # fmt: skip
    residuals = []
    for item in dataset:
        source, target, mask = item["source"][None], item["target"][None], item["mask"]
        pred = model(source)
        sums["psnr"] += float(psnr(pred, target).sum())
        # grey levels (0-255) from [-1, 1]
        change, truth, error = (
            ((pred - source) * 127.5)[0],
            ((target - source) * 127.5)[0],
            ((pred - target) * 127.5)[0],
        )
        lips, eyes, face = mask == LIPS, mask == EYE, (mask == LIPS) | (mask == EYE) | (mask == SKIN)
        sums["lip_dot"] += float((change * truth)[:, lips].sum())
        sums["lip_tt"] += float((truth * truth)[:, lips].sum())
        sums["lip_pred_abs"] += float(change[:, lips].abs().sum())
        sums["lip_tgt_abs"] += float(truth[:, lips].abs().sum())
        sums["eye_abs"] += float(error[:, eyes].abs().sum())
        sums["eye_px"] += float(eyes.sum()) * 3
        sums["face_sse"] += float((error[:, face] ** 2).sum())
        residuals.append(truth[:, face].reshape(3, -1))
    all_truth = torch.cat(residuals, dim=1)
    sst = float(((all_truth - all_truth.mean(dim=1, keepdim=True)) ** 2).sum())
    n = len(dataset)
    return {
        "val_psnr": round(sums["psnr"] / n, 3),
        "lipstick": round(sums["lip_dot"] / max(sums["lip_tt"], 1e-9), 4),
        "lip_abs_ratio": round(sums["lip_pred_abs"] / max(sums["lip_tgt_abs"], 1e-9), 4),
        "eye_l1": round(sums["eye_abs"] / max(sums["eye_px"], 1), 3),
        "r2_face": round(1 - sums["face_sse"] / max(sst, 1e-9), 4),
        "val_faces": n,
    }


def interleaved_timing(models: dict, rounds: int, runs: int, train_steps: int, tmp: Path) -> dict:
    """Median ORT fp32 batch-1 ms and training images/s per design, every design once in each round (in a
    rotating order). Designs of one architecture differ only by the machine's noise: `report` gives that spread."""
    image = np.random.default_rng(0).uniform(-1, 1, (1, 3, 256, 256)).astype(np.float32)
    sessions = {name: ort_session(export_onnx(model, tmp / f"{name}.onnx", 256)) for name, (model, _) in models.items()}
    ms, img_s = {n: [] for n in models}, {n: [] for n in models}
    names = list(models)
    # Each round starts at the next design, so no design always runs first (a warm cache, a clock boost).
    orders = [names[i % len(names) :] + names[: i % len(names)] for i in range(rounds)]
    time.sleep(1.0)  # let the threads of the PyTorch work before (scoring, export) go idle
    for order in orders:  # ONNX Runtime first, on its own: PyTorch's threads spin for a while after a training
        for name in order:  # step and would slow the ORT run that follows it
            session = sessions[name]
            for _ in range(3):
                session.run(None, {"source": image})
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, {"source": image})
                times.append((time.perf_counter() - start) * 1000)
            ms[name].append(median(times))
    for order in orders if train_steps else []:
        for name in order:
            model, cfg = models[name]
            img_s[name].append(training_throughput(cfg, model, torch.device("cpu"), train_steps))
    return {n: {"ort_fp32_ms": median(ms[n]), "train_img_per_s": median(img_s[n]) if img_s[n] else None} for n in ms}


def design_config(overrides: list[str], epochs: int):
    return load_config(DEFAULT_CONFIG, [*overrides, f"train.epochs={epochs}"])


def report(names: list[str], args) -> dict:
    rows, models, same_arch = {}, {}, {}
    for name in names:
        run_dir = Path(args.out) / name
        checkpoint = run_dir / "tinybeauty_final.pt"
        if not checkpoint.is_file():
            print(f"[sweep] {name}: no tinybeauty_final.pt yet, left out of the table", file=sys.stderr)
            continue
        state = load_checkpoint(checkpoint)
        model = load_tinybeauty(state)
        summary = json.loads((run_dir / "summary.json").read_text())
        what, overrides = DESIGNS[name]
        rows[name] = {
            "design": name,
            "what": what,
            "overrides": overrides,
            "params": count_parameters(model),
            "macs": count_macs(model, 256),
            "epochs": summary["epochs"],
            "best_val_psnr": summary["best_val_psnr"],
            "identity_psnr": summary["identity_psnr"],
            "train_seconds": summary["seconds"],
            **score(state, run_dir, args.data),
        }
        models[name] = (model, design_config(overrides, args.epochs))
        # Rows with the same architecture time the same graph: their spread is the measurement's noise.
        same_arch.setdefault(json.dumps(state["model_kwargs"], sort_keys=True), []).append(name)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        timing = interleaved_timing(models, args.rounds, args.runs, args.train_steps, Path(tmp))
        for name in models:
            fp32 = Path(tmp) / f"{name}.onnx"
            calib = np.random.default_rng(0).uniform(-1, 1, (8, 3, 256, 256)).astype(np.float32)
            int8 = quantize_int8(fp32, Path(tmp) / f"{name}_int8.onnx", calib)
            rows[name]["onnx_int8_kb"] = round(int8.stat().st_size / 1024, 1)
    base = timing.get("previous_default")
    for name, row in rows.items():
        row["ort_fp32_ms"] = round(timing[name]["ort_fp32_ms"], 3)
        row["train_img_per_s"] = timing[name]["train_img_per_s"] and round(timing[name]["train_img_per_s"], 1)
        if base:
            row["ort_vs_default"] = round(timing[name]["ort_fp32_ms"] / base["ort_fp32_ms"], 3)
            if base["train_img_per_s"]:
                row["train_vs_default"] = round(timing[name]["train_img_per_s"] / base["train_img_per_s"], 3)
    noise = {}
    for group in (g for g in same_arch.values() if len(g) > 1):
        for key in ("ort_fp32_ms", "train_img_per_s"):
            values = [rows[n][key] for n in group if rows[n].get(key)]
            if values:
                noise.setdefault(key, []).append({"designs": group, "min": min(values), "max": max(values)})
    result = {
        "bench": "tinybeauty_arch_sweep",
        "noise_same_architecture": noise,
        "data": args.data,
        "epochs": args.epochs,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },  # fmt: skip
        "timing": {"rounds": args.rounds, "runs_per_round": args.runs, "train_steps_per_round": args.train_steps},
        "designs": list(rows.values()),
    }
    atomic_write_text(Path(args.out) / "sweep.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(Path(args.out) / "sweep.md", markdown(result))
    return result


def markdown(result: dict) -> str:
    head = ("| design | what it tries | params | MMACs | ORT fp32 ms (x default) | train img/s (x default) | "
            "val PSNR dB | lipstick | eye L1 | R^2 face |\n|---|---|---|---|---|---|---|---|---|---|\n")  # fmt: skip
    lines = []
    for r in result["designs"]:
        lines.append(
            f"| {r['design']} | {r['what']} | {r['params']:,} | {r['macs'] / 1e6:.0f} | "
            f"{r['ort_fp32_ms']:.2f} ({r.get('ort_vs_default', float('nan')):.2f}) | "
            f"{r['train_img_per_s'] or float('nan'):.1f} ({r.get('train_vs_default', float('nan')):.2f}) | "
            f"{r['val_psnr']:.2f} | {100 * r['lipstick']:.0f}% | {r['eye_l1']:.2f} | {r['r2_face']:.3f} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", required=True, help="folder of the runs (keep it outside the repository)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "pairs_style1"))
    parser.add_argument("--designs", default=",".join(DESIGNS), help="comma-separated names from DESIGNS")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=1, help="trainings at a time")
    parser.add_argument("--threads", type=int, default=2, help="threads per training and for the timing")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (every design once per round)")
    parser.add_argument("--runs", type=int, default=30, help="ORT runs per design and round")
    parser.add_argument("--train-steps", type=int, default=5, help="timed optimizer steps per design and round")
    parser.add_argument("--no-train", action="store_true", help="score and time the designs already trained")
    parser.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.designs.split(",") if n.strip()]
    unknown = [n for n in names if n not in DESIGNS]
    if unknown:
        raise SystemExit(f"error: unknown design(s) {', '.join(unknown)}; known: {', '.join(DESIGNS)}")
    args.data = str(Path(args.data).resolve())
    if args.train_only:
        run_design(names[0], DESIGNS[names[0]][1], args, Path(args.out) / f"{names[0]}.log")
        return None
    setup_logging()
    if not args.no_train:
        train_all(names, args)
    result = report(names, args)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

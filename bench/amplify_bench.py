"""Amplification speed (stage 3): face preparation, DDA img2img and the whole dda_amplify loop.

    python bench/amplify_bench.py                                   # tiny SD DDA on CPU, JSON to stdout
    python bench/amplify_bench.py --faces 8 --batch-sizes 1,4 --threads 1 --out runs/amplify_bench.json
    python bench/amplify_bench.py --pretrained /models/sd15 --gpu-batch-sizes 1,4,8,16   # + SD 1.5 fp16 on a GPU

What it measures, at the official settings (strength 0.3, 10 DDIM steps: 3 denoising steps, each a
LoRA and a base UNet pass for RDM, plus a VAE encode and two decodes):
- `face_prep`: seconds per photo to find, align and parse the face (MediaPipe, CPU).
- `cpu_tiny`: the tiny SD-shaped DDA (models/tiny_sd.py, random weights: the cost is the shape, not
  the weights) at `--resolution`, images/s per batch size, and the end-to-end `amplify()` loop
  (read, detect, parse, generate, write PNGs, manifest) on `--faces` photos.
- `gpu_sd15`: with CUDA and `--pretrained` (a local SD 1.5 folder), the same DDA call in fp16 at
  512x512 for each batch size, the fastest, and the hours 20,000 faces take on one GPU at that rate.
  Without a GPU it says so instead of a number.
The timings are medians of `--repeats` timed calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import dda_amplify as amp
from common import (
    REPO_ROOT,
    atomic_write_text,
    from_uint8,
    load_config,
    setup_logging,
)
from data import face_crops
from data.io import list_images
from models import dda_io
from models.tiny_sd import build_tiny_sd

SAMPLE_FACES = REPO_ROOT / "data" / "samples" / "faces"


def build_dda(pretrained: str | Path, resolution: int, device: torch.device, dtype: torch.dtype):
    """A fresh DDA as stage 2 builds it from configs/dda.yaml (LoRA rank 16 on `lora.target_modules`)."""
    overrides = [f"model.pretrained={pretrained}", f"train.resolution={resolution}"]
    cfg = load_config(REPO_ROOT / "configs" / "dda.yaml", overrides)
    return dda_io.build_dda(cfg, device=device, dtype=dtype).to(device).eval()


def bench_cfg(faces: Path, out: Path, resolution: int, batch_size: int, num_images: int):
    overrides = [
        "checkpoint=bench",
        f"input_dir={faces}",
        f"output_dir={out}",
        f"resolution={resolution}",
        f"batch_size={batch_size}",
        f"num_images={num_images}",
        "wandb.mode=disabled",
    ]
    return load_config(amp.DEFAULT_CONFIG, overrides)


def time_call(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, kernels, caches
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def prepare_faces(faces: Path, count: int, resolution: int) -> tuple[list, float]:
    cfg = bench_cfg(faces, Path("unused"), resolution, 1, count)
    aligner, parser = face_crops.build_face_tools(cfg, resolution)
    prepared, seconds = [], []
    for path in list_images(faces)[:count]:
        start = time.perf_counter()
        prepared.append(face_crops.prepare_face(path, aligner, parser, resolution))
        seconds.append(time.perf_counter() - start)
    return prepared, statistics.median(seconds[1:] or seconds)  # the first call loads the MediaPipe graphs


def dda_images_per_second(dda, prepared: list, batch_sizes: list[int], repeats: int, device, cfg) -> dict:
    results = {}
    models = {"bench": dda}
    amp.resolve_sampling(cfg, dda)  # null strength/steps/scheduler: the DDA's own, as dda_amplify.py does
    for batch_size in batch_sizes:
        batch = [prepared[i % len(prepared)] for i in range(batch_size)]
        source = torch.stack([from_uint8(f.source) for f in batch]).to(device)  # (B, 3, R, R)
        mask = torch.stack([torch.from_numpy(f.mask).long() for f in batch]).to(device)  # (B, R, R)
        seeds = list(range(batch_size))

        def run(source=source, mask=mask, seeds=seeds):
            with torch.no_grad():
                amp.generate(models, cfg, source, mask, seeds)

        seconds = time_call(run, repeats)
        results[str(batch_size)] = {
            "seconds_per_batch": round(seconds, 4),
            "images_per_second": round(batch_size / seconds, 3),
        }
    return results


def bench_cpu(args, prepared: list) -> dict:
    from accelerate import Accelerator  # accelerate: only the amplifier's launch needs it, loaded there

    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_sd(Path(tmp) / "tiny_sd")
        dda = build_dda(tiny, args.resolution, device, torch.float32)
        cfg = bench_cfg(args.faces_dir, Path(tmp) / "out", args.resolution, max(args.batch_sizes), args.faces)
        per_batch = dda_images_per_second(dda, prepared, args.batch_sizes, args.repeats, device, cfg)
        sampling = {k: cfg[k] for k in ("strength", "num_steps", "scheduler")}  # resolved from the DDA
        aligner, parser = face_crops.build_face_tools(cfg, args.resolution)
        summary = amp.amplify(cfg, Accelerator(cpu=True), {"bench": dda}, aligner, parser, args.resolution)
    return {
        "model": "tiny SD-1.5-shaped (models/tiny_sd.py), fp32",
        "resolution": args.resolution,
        "torch_threads": torch.get_num_threads(),
        "lora_target_modules": list(dda.lora_targets),
        "sampling": sampling,
        "dda_by_batch_size": per_batch,
        "end_to_end": {
            "faces": args.faces,
            "batch_size": max(args.batch_sizes),
            "pairs": summary["pairs"],
            "images_per_second": summary["images_per_second"],
            "seconds_per_image": summary["seconds_per_image"],
            "dda_seconds_per_image": summary["dda_seconds_per_image"],
        },
    }


def bench_gpu(args, prepared_512: list | None) -> dict:
    if not torch.cuda.is_available():
        return {"measured": False, "reason": "not measured: no GPU lent in this session"}
    if args.pretrained is None:
        return {"measured": False, "reason": "not measured: give --pretrained (a local SD 1.5 folder)"}
    device = torch.device("cuda")
    dda = build_dda(args.pretrained, 512, device, torch.float16)
    cfg = bench_cfg(args.faces_dir, Path("unused"), 512, 1, args.faces)
    per_batch = dda_images_per_second(dda, prepared_512, args.gpu_batch_sizes, args.repeats, device, cfg)
    best = max(per_batch, key=lambda b: per_batch[b]["images_per_second"])
    rate = per_batch[best]["images_per_second"]
    fused = None
    if args.fuse_lora:  # dda_amplify.py model.fuse_lora=true: the LoRA merged into plain UNet copies
        fused = dda_images_per_second(dda.fuse_lora(), prepared_512, [int(best)], args.repeats, device, cfg)[best]
    return {
        "measured": True,
        "device": torch.cuda.get_device_name(0),
        "model": f"{args.pretrained}, fp16",
        "resolution": 512,
        "dda_by_batch_size": per_batch,
        "fastest_batch_size": int(best),
        "images_per_second": rate,
        "hours_for_20000_faces": round(20000 / rate / 3600, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        "fused_lora_at_fastest_batch": fused,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--faces-dir", type=Path, default=SAMPLE_FACES, help="photos to amplify (%(default)s)")
    parser.add_argument("--faces", type=int, default=8, help="photos for face prep and the end-to-end run")
    parser.add_argument("--resolution", type=int, default=64, help="tiny-model output size on CPU")
    parser.add_argument("--batch-sizes", default="1,4", help="CPU batch sizes")
    parser.add_argument("--gpu-batch-sizes", default="1,4,8,16", help="GPU batch sizes (SD 1.5, fp16, 512)")
    parser.add_argument("--pretrained", default=None, help="local SD 1.5 folder for the GPU part")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fuse-lora", action="store_true", help="GPU: also time the fastest batch with the LoRA fused")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.gpu_batch_sizes = [int(b) for b in args.gpu_batch_sizes.split(",")]
    setup_logging()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    defaults = load_config(amp.DEFAULT_CONFIG)
    prepared, prep_seconds = prepare_faces(args.faces_dir, args.faces, args.resolution)
    result = {
        "settings": {"guidance_scale": defaults["guidance_scale"], "repeats": args.repeats},  # sampling: per model
        "face_prep": {"faces": len(prepared), "seconds_per_face": round(prep_seconds, 4)},
        "cpu_tiny": bench_cpu(args, prepared),
    }
    prepared_512 = prepare_faces(args.faces_dir, args.faces, 512)[0] if torch.cuda.is_available() else None
    result["gpu_sd15"] = bench_gpu(args, prepared_512)
    print(json.dumps(result))  # the last line is the JSON
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

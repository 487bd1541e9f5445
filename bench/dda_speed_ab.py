"""Before/after speed of stage 2's training step and stage 3's loop on the CPU with the shipped prior, interleaved.

    git archive REV | tar -x -C /tmp/before            # the checkout to compare against (read only)
    python bench/dda_speed_ab.py --before /tmp/before --rounds 3 --after-train-args "model.region_conditioning=false" \
        --out bench/results/dda_speed_ab_30.json     # unpinned, nothing else running: the overlap needs the 2nd core

Each round runs both checkouts ("before" and this one, "after") in alternating order (before-after, then
after-before, ...), each stage as its own process with one torch thread, so both see the same load:
- training: that checkout's `dda_training.py` on the prior at 128 px, 5 seed pairs (stage 1 from the bundled
  faces and `classic_red_lip`), `train.epochs=E`, the loss weights given to both (their defaults may differ):
  steps/s from its summary (`seconds_per_step` times the epochs only); its final LoRA and sample grid are compared
  bit for bit with the other checkout's (equal only where both train the same model: since issue 25 the cheeks
  have a weight of their own, so not against a checkout before it; the latent cache's bit-for-bit guarantee is
  tests/test_dda.py's);
- amplification: that checkout's `dda_amplify.py` on N faces at 128 px with one DDA checkpoint (the first
  training run's): images/s from its summary; the pairs compared byte for byte, the manifest line by line
  (on the keys both checkouts write, without the timing).
Medians over the rounds, the after/before ratio, and the 1-minute load average when each run started.

`--stages amplify` times stage 3 only (the checkpoint from one untimed training run of "before");
`--after-args` gives the "after" amplification runs overrides (e.g. `model.fuse_lora=false`), `--after-train-args`
its training runs (e.g. `model.region_conditioning=false`: a default the "before" checkout does not have). Where the pairs
differ, the largest difference of a target pixel (0-255) and how many values differ are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import REPO_ROOT, atomic_write_text, load_checkpoint

SHARED_FACES = REPO_ROOT.parent / "shared" / "data" / "faces"
SAMPLE_FACES = REPO_ROOT / "data" / "samples" / "faces"
PRIOR = REPO_ROOT / "weights" / "face_prior"


def run(checkout: Path, script: str, overrides: list[str], log: Path) -> float:
    """One stage of `checkout` as a process with one thread; returns the wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    with open(log, "w") as file:
        result = subprocess.run([sys.executable, script, *overrides], cwd=checkout, stdout=file, stderr=subprocess.STDOUT,
                                env=env)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{checkout}/{script} failed; log {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started


def training(checkout: Path, pairs: Path, out: Path, epochs: int, extra: list[str] = ()) -> dict:
    overrides = [f"model.pretrained={PRIOR}", f"data.root={pairs}", f"output_dir={out}", "train.resolution=128",
                 f"train.epochs={epochs}", f"train.sample_every={epochs}", f"train.checkpoint_every={epochs}",
                 "train.lr=1e-3", "loss.l1=20", "loss.eyeliner=0.5", "wandb.mode=disabled", "train.device=cpu", *extra]  # fmt: skip
    load = os.getloadavg()[0]
    wall = run(checkout, "dda_training.py", overrides, out.with_suffix(".log"))
    summary = json.loads((out / "summary.json").read_text())
    return {"steps_per_second": 1 / summary["seconds_per_step"], "training_wall_seconds": wall, "load_1min": load,
            "steps": summary["steps"]}  # fmt: skip


def amplification(checkout: Path, checkpoint: Path, faces: Path, out: Path, extra: list[str] = ()) -> dict:
    overrides = [f"checkpoint={checkpoint}", f"input_dir={faces}", f"output_dir={out}", "wandb.mode=disabled", *extra]
    load = os.getloadavg()[0]
    wall = run(checkout, "dda_amplify.py", overrides, out.with_suffix(".log"))
    summary = json.loads((out / "summary.json").read_text())
    # the rest of a pair's time (face preparation, writing, waiting): what the overlap hides behind the model
    other = 1 / summary["images_per_second"] - summary["dda_seconds_per_image"]
    return {"images_per_second": summary["images_per_second"], "dda_seconds_per_image": summary["dda_seconds_per_image"],
            "other_seconds_per_image": other,
            "wall_seconds": wall, "load_1min": load, "pairs": summary["pairs"]}  # fmt: skip


def same_training(a: Path, b: Path) -> bool:
    lora_a, lora_b = (load_checkpoint(p / "dda_final.pt")["dda"]["lora"] for p in (a, b))
    samples = [sorted(p.glob("sample_epoch_*.png")) for p in (a, b)]
    same_samples = [s.read_bytes() for s in samples[0]] == [s.read_bytes() for s in samples[1]]
    return lora_a.keys() == lora_b.keys() and all(torch.equal(lora_a[k], lora_b[k]) for k in lora_a) and same_samples


def pair_bytes(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes() for sub in ("source", "target", "mask") for p in (out / sub).glob("*")
    }


def target_difference(a: Path, b: Path) -> dict:
    """The largest difference of a target pixel value between two runs' pairs, and how many values differ."""
    largest, differing, total = 0, 0, 0
    for path in sorted((a / "target").glob("*.png")):
        x = np.asarray(Image.open(path), np.int16)
        y = np.asarray(Image.open(b / "target" / path.name), np.int16)
        largest = max(largest, int(np.abs(x - y).max()))
        differing, total = differing + int((x != y).sum()), total + x.size
    return {"max_pixel_difference": largest, "values_differing": differing, "values": total}


def same_manifest(a: Path, b: Path) -> bool:
    """The same lines in the same order, on the keys both write (a checkout may record a setting the other has
    not got yet) and without the timing."""
    lines = [[json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()] for out in (a, b)]
    if len(lines[0]) != len(lines[1]):
        return False
    for x, y in zip(*lines):
        common = (x.keys() & y.keys()) - {"seconds"}
        if any(x[k] != y[k] for k in common):
            return False
    return True


def summarise(runs: list[dict], key: str) -> dict:
    before = [r["before"][key] for r in runs]
    after = [r["after"][key] for r in runs]
    ratios = [a / b for a, b in zip(after, before)]
    return {
        "before_median": round(statistics.median(before), 4),
        "after_median": round(statistics.median(after), 4),
        "ratio_of_medians": round(statistics.median(after) / statistics.median(before), 3),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "ratio_median": round(statistics.median(ratios), 3),
        "load_1min_median": round(
            statistics.median(r[arm]["load_1min"] for r in runs for arm in ("before", "after")), 2
        ),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    # a real run is 500 epochs: the cache's one-time encodes (up to 20 images: 5 pairs and their flips) weigh
    # on a 4-epoch run as they never do on a real one
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of 5 pairs per run")
    parser.add_argument("--faces", type=int, default=24, help="photos per amplification run")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--stages", choices=("both", "amplify"), default="both", help="amplify: stage 3 only")
    parser.add_argument("--after-args", default="", help="overrides for the 'after' amplification runs")
    parser.add_argument("--after-train-args", default="", help="overrides for the 'after' training runs")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="dda_speed_ab_"))
    arms = {"before": args.before.resolve(), "after": REPO_ROOT}
    pairs = work / "seed_pairs"
    if not (pairs / "target").is_dir():
        subprocess.run([sys.executable, str(REPO_ROOT / "make_seed_pairs.py"), "--faces", str(SAMPLE_FACES),
                        "--template", str(REPO_ROOT / "configs" / "makeup" / "classic_red_lip.yaml"), "--num", "5",
                        "--size", "128", "--output", str(pairs)], check=True, capture_output=True)  # fmt: skip
    faces = work / "faces"
    if not faces.is_dir():
        faces.mkdir(parents=True)
        source = SHARED_FACES if SHARED_FACES.is_dir() else SAMPLE_FACES
        for path in sorted(source.glob("*.jpg"))[: args.faces]:
            shutil.copy2(path, faces / path.name)
    rounds = []
    checkpoint = None
    for index in range(args.rounds):
        order = ["before", "after"] if index % 2 == 0 else ["after", "before"]
        result = {"order": order, "before": {}, "after": {}}
        if args.stages == "both":
            for arm in order:
                out = work / f"round{index}_{arm}_train"
                shutil.rmtree(out, ignore_errors=True)
                extra = args.after_train_args.split() if arm == "after" else []
                result[arm].update(training(arms[arm], pairs, out, args.epochs, extra))
                checkpoint = checkpoint or out / "dda_final.pt"
            result["training_bit_identical"] = same_training(*(work / f"round{index}_{a}_train" for a in arms))
        elif checkpoint is None:  # one untimed run of "before": a checkpoint both checkouts load
            out = work / "checkpoint_train"
            if not (out / "dda_final.pt").is_file():
                training(arms["before"], pairs, out, args.epochs)
            checkpoint = out / "dda_final.pt"
        for arm in order:
            out = work / f"round{index}_{arm}_amplify"
            shutil.rmtree(out, ignore_errors=True)
            extra = args.after_args.split() if arm == "after" else []
            result[arm].update(amplification(arms[arm], checkpoint, faces, out, extra))
        made = [work / f"round{index}_{arm}_amplify" for arm in ("before", "after")]
        result["amplification_byte_identical"] = pair_bytes(made[0]) == pair_bytes(made[1])
        result["amplification_targets"] = target_difference(*made)
        result["manifest_identical"] = same_manifest(*made)
        rounds.append(result)
        print(json.dumps(result), flush=True)
    report = {
        "machine": {"cores": os.cpu_count(), "torch": torch.__version__, "threads_per_run": 1},
        "setup": {
            "model": "weights/face_prior",
            "resolution": 128,
            "pairs": 5,
            "epochs": args.epochs,
            "faces": args.faces,
            "batch_size": 4,
            "rounds": args.rounds,
            "before": str(arms["before"]),
            "stages": args.stages,
            "after_args": args.after_args,
            "after_train_args": args.after_train_args,
        },  # fmt: skip
        **({"training_steps_per_second": summarise(rounds, "steps_per_second")} if args.stages == "both" else {}),
        "amplification_images_per_second": summarise(rounds, "images_per_second"),
        "amplification_dda_seconds_per_image": summarise(rounds, "dda_seconds_per_image"),
        "amplification_other_seconds_per_image": summarise(rounds, "other_seconds_per_image"),
        "training_bit_identical": all(r["training_bit_identical"] for r in rounds) if args.stages == "both" else None,
        "amplification_max_pixel_difference": max(r["amplification_targets"]["max_pixel_difference"] for r in rounds),
        "amplification_byte_identical": all(r["amplification_byte_identical"] for r in rounds),
        "manifest_identical_on_common_keys": all(r["manifest_identical"] for r in rounds),
        "rounds": rounds,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return report


if __name__ == "__main__":
    main()

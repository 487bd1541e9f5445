"""The whole Data Amplify Learning pipeline, end to end, on CPU in minutes.

    bash scripts/demo.sh                  # fresh machine: make .venv, install, then run this
    python run_demo.py                    # everything under runs/demo/
    python run_demo.py --out runs/demo2 --force   # redo every stage

Stages, each the same script a user runs on a GPU, with the small configs in `configs/demo/`:
  1. make_seed_pairs.py    five seed pairs from bundled sample faces and a shipped makeup template
  2. dda_training.py       the amplifier: by default the makeup draft (the seeds' change carried onto each face
                           by its landmarks); `amplifier: draft+dda` (or dda) in configs/demo/dda.yaml trains the DDA
                           (LoRA + RDM + FGMM) over the shipped face prior (weights/face_prior/, an
                           SD-1.5-shaped model the project trained on faces; SD 1.5 itself cannot be
                           downloaded here), at 128 px
  3. dda_amplify.py        the remaining sample faces -> makeup pairs
     data.makeup_truth     the template rendered on those very crops: how much of the makeup the amplified
                           pairs carry (R^2 of the makeup residual, lips' change as a share of the truth's)
  4. tinybeauty_training.py  TinyBeauty on the amplified pairs
  5. tinybeauty_inference.py --full-photo on a photo with two faces (AF12 and CM10 of the samples)
  6. tinybeauty_export.py  ONNX fp32 + int8

`--pretrained runs/tiny_sd` (after `python -m models.tiny_sd runs/tiny_sd`) runs the same pipeline on
the random tiny model instead: the machinery only, no makeup. A stage whose outputs exist is skipped
on a rerun (`--force` redoes them). The report is `OUT/summary.md` and `OUT/summary.png`, built from
the stages' own summary files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import atomic_save_image, atomic_write_text, run_cli
from data.io import list_images, read_rgb
from demo_report import write_report
from errors import MakeupError

REPO = Path(__file__).resolve().parent
SAMPLE_FACES = REPO / "data" / "samples" / "faces"
FACE_PRIOR = REPO / "weights" / "face_prior"
DEMO_CONFIGS = REPO / "configs" / "demo"


@dataclass
class Stage:
    key: str
    title: str
    command: list[str]
    done_marker: Path  # the file whose presence means the stage finished
    log: Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the whole pipeline on the bundled samples (CPU, minutes).")
    parser.add_argument("--out", default="runs/demo", help="run folder (default: %(default)s)")
    parser.add_argument("--faces", default=str(SAMPLE_FACES), help="folder of plain faces (default: bundled samples)")
    parser.add_argument("--template", default="configs/makeup/classic_red_lip.yaml", help="stage-1 makeup template")
    parser.add_argument("--num-seed", type=int, default=5, help="seed pairs for stage 2 (default: %(default)s)")
    parser.add_argument("--pretrained", default=str(FACE_PRIOR), help="base model of the DDA (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rerun stages whose outputs already exist")
    parser.add_argument("--smoke", action="store_true", help="smallest settings (used by the test suite)")
    return parser.parse_args(argv)


def _overrides(smoke: bool, stage: str) -> list[str]:
    """--smoke shrinks the (already small) demo configs further so the test suite runs the pipeline fast."""
    if not smoke:
        return []
    return {
        "dda": ["train.epochs=2", "train.sample_every=2", "train.checkpoint_every=2"],
        "amplify": ["num_images=3"],
        "tinybeauty": ["train.epochs=2", "train.sample_every=2"],
    }.get(stage, [])


def build_stages(args: argparse.Namespace, out: Path) -> list[Stage]:
    py = sys.executable
    logs = out / "logs"
    seed_dir, sd_dir, dda_dir = out / "seed_pairs", Path(args.pretrained), out / "dda_model"
    unseen_dir, amp_dir, tb_dir = out / "unseen_faces", out / "amplified", out / "tinybeauty_model"
    photo_in, photo_out, export_dir = out / "photo", out / "photo_makeup", out / "export"
    return [
        Stage(
            "seed_pairs",
            "Stage 1: seed pairs",
            [
                py,
                "make_seed_pairs.py",
                "--faces",
                args.faces,
                "--template",
                args.template,
                "--num",
                str(args.num_seed),
                "--output",
                str(seed_dir),
                "--size",
                "256",
            ],
            seed_dir / "summary.json",
            logs / "1_seed_pairs.log",
        ),
        Stage(
            "dda",
            "Stage 2: DDA training",
            [
                py,
                "dda_training.py",
                "--config",
                str(DEMO_CONFIGS / "dda.yaml"),
                f"model.pretrained={sd_dir}",
                f"data.root={seed_dir}",
                f"output_dir={dda_dir}",
                *_overrides(args.smoke, "dda"),
            ],
            dda_dir / "summary.json",
            logs / "2_dda_training.log",
        ),
        Stage(
            "amplify",
            "Stage 3: amplification",
            [
                py,
                "dda_amplify.py",  # the real config; pairs at 256 (the DDA paints at its 128, the change is resized)
                f"checkpoint={dda_dir / 'dda_final.pt'}",
                "resolution=256",
                f"input_dir={unseen_dir}",
                f"output_dir={amp_dir}",
                *_overrides(args.smoke, "amplify"),
            ],
            amp_dir / "summary.json",
            logs / "3_amplify.log",
        ),
        Stage(
            "truth",
            "Stage 3 measured: the template's truth on the amplified crops",
            [py, "-m", "data.makeup_truth", str(amp_dir), args.template, str(out / "amplified_truth")],
            out / "amplified_truth" / "summary.json",
            logs / "3b_truth.log",
        ),
        Stage(
            "tinybeauty",
            "Stage 4: TinyBeauty training",
            [
                py,
                "tinybeauty_training.py",
                "--config",
                str(DEMO_CONFIGS / "tinybeauty.yaml"),
                f"data.root={amp_dir}",
                f"output_dir={tb_dir}",
                *_overrides(args.smoke, "tinybeauty"),
            ],
            tb_dir / "summary.json",
            logs / "4_tinybeauty_training.log",
        ),
        Stage(
            "inference",
            "Inference on a full photo",
            [
                py,
                "tinybeauty_inference.py",
                "--checkpoint",
                str(tb_dir / "tinybeauty_best_psnr.pt"),
                "--input",
                str(photo_in),
                "--output",
                str(photo_out),
                "--full-photo",
            ],
            photo_out / "two_faces.png",
            logs / "5_inference.log",
        ),
        Stage(
            "export",
            "Mobile export (ONNX)",
            [
                py,
                "tinybeauty_export.py",
                "--checkpoint",
                str(tb_dir / "tinybeauty_best_psnr.pt"),
                "--output",
                str(export_dir),
            ],
            export_dir / "export_report.json",
            logs / "6_export.log",
        ),
    ]


def prepare_inputs(args: argparse.Namespace, out: Path) -> None:
    """The faces stage 1 did not use go to stage 3; a two-face photo is made for full-photo inference."""
    seed_summary = out / "seed_pairs" / "summary.json"
    used = set()
    if seed_summary.is_file():
        used = {Path(p).stem for p in json.loads(seed_summary.read_text()).get("names", [])}
    unseen = out / "unseen_faces"
    unseen.mkdir(parents=True, exist_ok=True)
    faces = list_images(args.faces)
    for face in faces:
        if face.stem not in used and not (unseen / face.name).exists():
            shutil.copy2(face, unseen / face.name)

    photo_dir = out / "photo"
    if not (photo_dir / "two_faces.png").exists():
        left, right = (read_rgb(face) for face in photo_faces(faces))
        height = max(left.shape[0], right.shape[0])
        canvas = np.full((height + 80, left.shape[1] + right.shape[1] + 120, 3), 235, np.uint8)
        canvas[40 : 40 + left.shape[0], 40 : 40 + left.shape[1]] = left
        canvas[40 : 40 + right.shape[0], 80 + left.shape[1] : 80 + left.shape[1] + right.shape[1]] = right
        atomic_save_image(canvas, photo_dir / "two_faces.png")


# Two bundled faces of different skin tones with closed, unpainted lips, on which lipstick and liner read plainly
# (and that the default five seed pairs do not use).
PHOTO_FACES = ("AF12", "CM10")


def photo_faces(faces: list[Path]) -> list[Path]:
    """The two faces of the full-photo example: PHOTO_FACES when --faces holds them, else its last two."""
    by_stem = {face.stem: face for face in faces}
    chosen = [by_stem[stem] for stem in PHOTO_FACES if stem in by_stem]
    return chosen if len(chosen) == 2 else [faces[-1], faces[-2]]


def run_stage(stage: Stage, force: bool) -> float | None:
    """Run one stage script, its output teed into its log. Returns seconds, or None when skipped."""
    if stage.done_marker.exists() and not force:
        print(f"[skip] {stage.title}: {stage.done_marker} exists (use --force to redo)")
        return None
    stage.log.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n=== {stage.title}\n$ {' '.join(stage.command)}", flush=True)
    start = time.perf_counter()
    with open(stage.log, "w") as log_file:
        process = subprocess.Popen(stage.command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            sys.stdout.write(line)
            log_file.write(line)
        code = process.wait()
    seconds = time.perf_counter() - start
    if code != 0:
        raise MakeupError(f"{stage.title} failed (exit {code}); see {stage.log}")
    if not stage.done_marker.exists():
        raise MakeupError(f"{stage.title} finished but wrote no {stage.done_marker}; see {stage.log}")
    return seconds


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    if not out.is_absolute():
        out = REPO / out
    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    total_start = time.perf_counter()
    for stage in build_stages(args, out):
        if stage.key == "amplify":
            prepare_inputs(args, out)
        seconds = run_stage(stage, args.force)
        if seconds is not None:
            timings[stage.key] = round(seconds, 1)

            atomic_write_text(timings_path, json.dumps(timings, indent=1))

    report = write_report(out)
    print(f"\nDone in {time.perf_counter() - total_start:.0f} s. Report: {report}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

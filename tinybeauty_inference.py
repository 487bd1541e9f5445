"""Apply a trained TinyBeauty to face images or whole photos, at an adjustable makeup intensity.

    python tinybeauty_inference.py --checkpoint tinybeauty_model/tinybeauty_best_psnr.pt --input faces/ --output out/
    python tinybeauty_inference.py --checkpoint CKPT --input photo.jpg --output out/ --full-photo
    python tinybeauty_inference.py --checkpoint CKPT --input faces/ --output out/ --intensity 0.5
    python tinybeauty_inference.py --checkpoint CKPT --input photos/ --output out/ --intensity lips=1.2,eyes=0.6,skin=0
    python tinybeauty_inference.py --list-styles                                  # the shipped styles
    python tinybeauty_inference.py --style smoky_eye --input photos/ --output out/ --full-photo   # no training

One PNG per input, with the input's stem, at the input's size. The model runs at its resolution
(`data.size` of the checkpoint's config); its makeup residual there is the clamped output minus the
face, `clamp(face + raw residual) - face`, what training compared with the target (the raw residual is
unconstrained where the clamp saturates, and upsampled it would overshoot into neighbouring pixels).
For a face of another size that residual is resized to the face's size before it is added, so a
large face keeps its own detail and only the makeup is upsampled. `--intensity X` (0 to 1.5, default
1) scales the residual: `clamp(face + X * residual)`; 0 gives the face back exactly, 1 the model's
output, 1.5 a stronger look (the exported ONNX takes the same value as its `intensity` input).
`--intensity lips=1.2,eyes=0.6,skin=0` gives each region its own (a region left out keeps 1): each face the
model sees is parsed (data/face_parsing.py, FaceMesh) and the change is scaled by a feathered per-pixel map
(deploy/regions.py; skin is the rest of the face, the background included). Equal values parse nothing.
`--full-photo` finds every face in a photo (data.face_align), applies the model to each aligned face
and pastes it back with a feathered edge; a photo without a face is written unchanged and reported.
`--style NAME` runs a shipped style's ONNX (weights/styles/NAME/, deploy/styles.py; the fp32 export unless
`--precision int8`) in ONNX Runtime instead of a checkpoint, the same way; a path to a style folder works
too (make_style.py's --out). Photos are read upright (their EXIF orientation applied) and written upright,
as PNG; a file that is not a readable image (truncated, corrupt, too large) is skipped with one line naming
it, and the others are still written. OUTPUT_DIR/summary.json lists what went in and came out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import (
    atomic_save_image,
    atomic_write_text,
    get_device,
    log,
    run_cli,
    setup_logging,
)
from data.face_align import FaceAligner, process_full_photo
from data.io import IMAGE_SUFFIXES, ImageReadError, list_images, read_rgb
from deploy.crop_model import MakeupModel
from deploy.makeup import apply_makeup, load_model
from deploy.regions import RegionIntensity, RegionParser, parse_intensity
from deploy.styles import DEFAULT_PRECISION, add_style_arguments, describe_styles, get_style
from errors import InputError


def collect_inputs(path: Path) -> list[Path]:
    if path.is_dir():
        inputs = list_images(path)
        if not inputs:
            raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
        return inputs
    if path.is_file():
        return [path]
    raise InputError(f"input not found: {path}")


def face_aligner():
    """One detector for the whole run (data.face_align; imported here: mediapipe is slow to load)."""
    return FaceAligner()


def process_photo(photo: np.ndarray, face_fn: Callable[[np.ndarray], np.ndarray], aligner) -> tuple[np.ndarray, int]:
    """Every face of a photo through `face_fn`, pasted back feathered; (photo, number of faces)."""
    return process_full_photo(photo, face_fn, aligner)


def face_function(
    checkpoint: str | Path | None,
    style: str | None,
    precision: str,
    device: str,
    levels: RegionIntensity,
    regions: RegionParser | None = None,
):
    """(face_fn: (H, W, 3) uint8 -> the same with makeup, the model's resolution, {what runs: its path}).
    Per region (`levels` not uniform) each face is parsed with `regions` into its intensity map."""
    if style is not None:
        chosen = get_style(style)
        engine = MakeupModel(chosen.model(precision), "onnxruntime", os.cpu_count() or 1, levels)
        engine.regions = regions
        return engine.makeup, engine.size, {"style": chosen.name, "model": str(engine.path)}
    torch_device = get_device(device)
    model, size = load_model(checkpoint, torch_device)

    def checkpoint_fn(face: np.ndarray) -> np.ndarray:
        if levels.uniform is not None:  # one value everywhere: no parse, today's output bit for bit
            return apply_makeup(model, face, size, torch_device, levels.uniform)
        return apply_makeup(model, face, size, torch_device, 1.0, regions.intensity_map(face, levels, size))

    return checkpoint_fn, size, {"checkpoint": str(checkpoint)}


def run(checkpoint: str | Path | None, inputs: list[Path], output: Path, full_photo: bool = False,
        device: str = "auto", intensity: float | str | dict | RegionIntensity = 1.0, style: str | None = None,
        precision: str = DEFAULT_PRECISION):  # fmt: skip
    levels = parse_intensity(intensity, "--intensity")
    regions = RegionParser() if levels.uniform is None else None
    face_fn, size, info = face_function(checkpoint, style, precision, device, levels, regions)
    described = f"style {info['style']} ({info['model']}, ONNX Runtime)" if style else f"{checkpoint} (device {device})"
    log.info("model %s, trained at %dx%d; %d input(s), intensity %s", described, size, size, len(inputs), levels)

    written, skipped, no_face, faces_total, start = [], [], [], 0, time.time()
    aligner = face_aligner() if full_photo else None
    for path in tqdm(inputs, desc="inference", disable=None):
        try:
            image = read_rgb(path)
        except ImageReadError as err:
            log.warning("skipped: %s", err)
            skipped.append(str(path))
            continue
        if full_photo:
            result, faces = process_photo(image, face_fn, aligner)
            faces_total += faces
            if faces == 0:
                log.warning("no face found in %s: written unchanged", path)
                no_face.append(str(path))
        else:
            result = face_fn(image)
        del image  # a 108 MP photo: one full-size copy fewer while the PNG is encoded
        out_path = output / f"{path.stem}.png"
        atomic_save_image(result, out_path)
        written.append(str(out_path))
    if aligner is not None:
        aligner.close()
    if regions is not None:
        regions.close()
        if regions.unparsed:
            log.warning("%d face(s) without a parse (FaceMesh found no face in the crop): the skin value there",
                        regions.unparsed)  # fmt: skip
    summary = {
        "stage": "tinybeauty_inference",
        "checkpoint": None,
        "style": None,
        **info,
        "model_size": size,
        "full_photo": full_photo,
        "intensity": levels.summary(),
        **(regions.counts() if regions is not None else {}),
        "inputs": len(inputs),
        "written": len(written),
        "skipped": skipped,
        "faces": faces_total if full_photo else None,
        "photos_without_face": no_face if full_photo else None,
        "seconds": round(time.time() - start, 2),
    }
    atomic_write_text(output / "summary.json", json.dumps(summary, indent=1))
    log.info("%d image(s) written to %s, %d skipped%s", len(written), output, len(skipped),
             f", {faces_total} face(s) in {len(inputs)} photo(s)" if full_photo else "")  # fmt: skip
    return summary


def intensity_argument(text: str) -> RegionIntensity:
    try:
        return parse_intensity(text, "--intensity")
    except ValueError as err:  # argparse prints an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="tinybeauty_*.pt from tinybeauty_training.py")
    add_style_arguments(model, parser, "; int8 is the phone's")
    parser.add_argument("--input", help="an image or a folder of images")
    parser.add_argument("--output", help="folder for the results (one PNG per input)")
    parser.add_argument("--full-photo", action="store_true", help="find, align and process every face of a photo")
    parser.add_argument(
        "--intensity",
        type=intensity_argument,
        default=RegionIntensity(),
        help="makeup strength, 0 (none) to 1.5, 1 the trained look; per region: lips=1.2,eyes=0.6,skin=0",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda")
    args = parser.parse_args(argv)
    if args.list_styles:
        print(describe_styles())
        return {}
    if not (args.checkpoint or args.style):
        parser.error("one of --checkpoint or --style is needed (--list-styles shows the shipped styles)")
    if not (args.input and args.output):
        parser.error("--input and --output are needed")
    setup_logging()
    if args.style:
        get_style(args.style)  # an unknown or incomplete style stops here, naming the known ones or the missing file
    inputs = collect_inputs(Path(args.input))
    return run(args.checkpoint, inputs, Path(args.output), args.full_photo, args.device, args.intensity,
               args.style, args.precision)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

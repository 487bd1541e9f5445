"""Stage 1: make the few seed pairs (plain face -> same face with makeup) that stage 2 trains on.

    python make_seed_pairs.py --faces data/samples/faces --template configs/makeup/classic_red_lip.yaml --num 5 --output runs/seed_pairs
    python make_seed_pairs.py --import BEFORE_DIR AFTER_DIR --output runs/seed_pairs --size 512

From plain faces and a makeup template (configs/makeup/*.yaml), or from your own before/after photos
(the same file names in both folders, e.g. exported from a retouching app). Each face is found,
eye-levelled and cropped square at --size (data/face_align.py), parsed (data/face_parsing.py), and
written in the paired dataset format: OUTPUT/source/NAME.png, OUTPUT/target/NAME.png and
OUTPUT/mask/NAME.png (0 background, 1 eye-makeup region, 2 lips, 3 skin), with OUTPUT/contact_sheet.png
and OUTPUT/summary.json. Pairs already in OUTPUT are kept, so a rerun only makes what is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common import (
    atomic_save_image,
    atomic_write_text,
    make_grid,
    run_cli,
    setup_logging,
)
from data.face_align import FaceAligner
from data.face_parsing import EYE_REGIONS, FaceParser
from data.io import ImageReadError, list_images, read_labels, read_rgb
from data.makeup_render import load_template, render_makeup
from errors import InputError

log = logging.getLogger("makeup")
MASK_COLOURS = np.array([[0, 0, 0], [70, 130, 255], [230, 40, 70], [240, 200, 160]], np.uint8)  # bg/eye/lips/skin


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--faces", metavar="DIR", help="folder of plain face photos")
    source.add_argument("--import", dest="import_dirs", nargs=2, metavar=("BEFORE_DIR", "AFTER_DIR"))
    parser.add_argument("--template", metavar="YAML", help="makeup template (with --faces)")
    parser.add_argument("--num", type=int, default=5, help="pairs to make (with --faces; default 5)")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--size", type=int, default=512, help="square crop size (default 512, for stage 2)")
    parser.add_argument("--margin", type=float, default=0.4, help="crop margin around the face box (default 0.4)")
    parser.add_argument("--seed", type=int, default=0, help="order in which faces are tried (default 0)")
    parser.add_argument(
        "--eye-region",
        choices=EYE_REGIONS,
        default=None,
        help="what the masks' eye label covers: lid (lids and liner; the default with --template, whose makeup is "
        "known) or area (also the brows and the eye openings, where a learned style may paint too; the default with "
        "--import); stage 2 records it and stage 3 parses alike",
    )
    parser.add_argument("--max-shift", type=float, default=3.0, help="import: warn above this landmark shift (px)")
    args = parser.parse_args(argv)
    if args.eye_region is None:  # why: docs/decisions.md#make_seed_pairs---eye-region
        args.eye_region = "area" if args.import_dirs else "lid"
    if args.faces and not args.template:
        parser.error("--faces needs --template configs/makeup/NAME.yaml")
    if args.num < 1 or args.size < 64:
        parser.error("--num must be at least 1 and --size at least 64")
    return args


def existing_pairs(output: Path) -> set[str]:
    """Names with source, target and mask all written (a killed run leaves no partial files: writes are atomic)."""
    if not (output / "source").is_dir():
        return set()
    names = {p.stem for p in (output / "source").glob("*.png")}
    return {n for n in names if (output / "target" / f"{n}.png").is_file() and (output / "mask" / f"{n}.png").is_file()}


def write_pair(output: Path, name: str, source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> None:
    # Target and mask first, source last: a pair counts as made only once all three exist.
    atomic_save_image(target, output / "target" / f"{name}.png")
    atomic_save_image(mask, output / "mask" / f"{name}.png")
    atomic_save_image(source, output / "source" / f"{name}.png")


def largest_face_crop(aligner: FaceAligner, image: np.ndarray):
    faces = aligner.detect(image)
    return faces[0] if faces else None


def from_template(args, aligner: FaceAligner, parser: FaceParser, done: set[str], summary: dict) -> list[str]:
    template = load_template(args.template)
    summary["template"] = {"path": str(args.template), "name": str(template.name)}
    faces_dir = Path(args.faces)
    if not faces_dir.is_dir():
        raise InputError(f"faces folder not found: {faces_dir}")
    files = list_images(faces_dir)
    if not files:
        raise InputError(f"no images in {faces_dir}")
    order = [files[i] for i in np.random.default_rng(args.seed).permutation(len(files))]
    made = sorted(done)
    progress = tqdm(order, desc="seed pairs", unit="face", total=len(order))
    for path in progress:
        if len(made) >= args.num:
            break
        if path.stem in done:
            continue
        try:
            image = read_rgb(path)
        except ImageReadError as err:
            summary["skipped"].append({"file": str(path), "reason": str(err).split(": ", 1)[-1]})
            continue
        face = largest_face_crop(aligner, image)
        parse = parser.parse(face.crop) if face is not None else None
        if parse is None:
            summary["skipped"].append({"file": str(path), "reason": "no face found"})
            continue
        write_pair(args.output, path.stem, face.crop, render_makeup(face.crop, parse, template), parse.makeup)
        made.append(path.stem)
        summary["pairs_made"] += 1
    progress.close()
    if len(made) < args.num:
        summary["error"] = f"only {len(made)} of {args.num} pairs could be made from {faces_dir}"
    return made


def landmark_shift(parser: FaceParser, before: np.ndarray, after: np.ndarray) -> float | None:
    a, b = parser.landmarks(before), parser.landmarks(after)
    if not a or not b:
        return None
    return float(np.median(np.linalg.norm(a[0] - b[0], axis=1)))


def from_import(args, aligner: FaceAligner, parser: FaceParser, done: set[str], summary: dict) -> list[str]:
    before_dir, after_dir = (Path(p) for p in args.import_dirs)
    for folder in (before_dir, after_dir):
        if not folder.is_dir():
            raise InputError(f"import folder not found: {folder}")
    before = {p.stem: p for p in list_images(before_dir)}
    after = {p.stem: p for p in list_images(after_dir)}
    for name in sorted(set(before) ^ set(after)):
        lonely = before.get(name) or after.get(name)
        other = after_dir if name in before else before_dir
        summary["skipped"].append({"file": str(lonely), "reason": f"no file named {name}.* in {other}"})
    made = sorted(done & set(before) & set(after))
    for name in tqdm(sorted(set(before) & set(after) - done), desc="import pairs", unit="pair"):
        try:
            plain, made_up = read_rgb(before[name]), read_rgb(after[name])
        except ImageReadError as err:
            path, reason = str(err).split(": ", 1)
            summary["skipped"].append({"file": path, "reason": reason})
            continue
        if plain.shape != made_up.shape:
            reason = f"size differs from {after[name]}: {plain.shape[1]}x{plain.shape[0]} vs {made_up.shape[1]}x{made_up.shape[0]}"
            summary["skipped"].append({"file": str(before[name]), "reason": reason})
            continue
        face = largest_face_crop(aligner, plain)
        parse = parser.parse(face.crop) if face is not None else None
        if parse is None:
            summary["skipped"].append({"file": str(before[name]), "reason": "no face found"})
            continue
        shift = landmark_shift(parser, plain, made_up)
        if shift is None:
            summary["skipped"].append({"file": str(after[name]), "reason": "no face found in the after photo"})
            continue
        if shift > args.max_shift:
            summary["warnings"].append(
                f"{name}: faces in {before[name]} and {after[name]} differ by {shift:.1f} px (median landmark "
                f"shift; above {args.max_shift:g}): the pair may not line up"
            )
        # The after photo goes through the before photo's own affine, so the two stay pixel-aligned.
        target = aligner.crop_with(face, made_up)
        write_pair(args.output, name, face.crop, target, parse.makeup)
        made.append(name)
        summary["pairs_made"] += 1
    if not made:
        summary["error"] = f"no usable before/after pairs in {before_dir} and {after_dir}"
    return made


def write_contact_sheet(output: Path, names: list[str]) -> Path:
    rows = []
    for name in names:
        source = read_rgb(output / "source" / f"{name}.png")
        target = read_rgb(output / "target" / f"{name}.png")
        mask = MASK_COLOURS[np.clip(read_labels(output / "mask" / f"{name}.png"), 0, 3)]
        thumb = 256
        rows.append([_thumb(source, thumb), _thumb(target, thumb), _thumb(mask, thumb, nearest=True)])
    path = output / "contact_sheet.png"
    atomic_save_image(make_grid(rows, labels=["source", "target (makeup)", "mask"]), path)
    return path


def _thumb(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(image).resize((size, size), resample))


def check_eye_region(output: Path, eye_region: str) -> None:
    """Refuse to add pairs with another mask convention to a folder that holds some already."""
    summary = output / "summary.json"
    made_with = json.loads(summary.read_text()).get("eye_region", "lid") if summary.is_file() else "lid"
    if made_with != eye_region:
        raise InputError(
            f"{output} holds pairs whose masks were made with --eye-region {made_with}, not {eye_region}: "
            "use another --output, or the same --eye-region to add pairs"
        )


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.output = Path(args.output)
    setup_logging()
    start = time.time()
    done = existing_pairs(args.output)
    mode = "template" if args.faces else "import"
    summary = {"stage": "seed_pairs", "mode": mode, "template": None, "requested": args.num if args.faces else None,
               "size": args.size, "eye_region": args.eye_region, "pairs_made": 0, "pairs_kept": 0, "pairs_total": 0,
               "names": [], "skipped": [], "warnings": []}  # fmt: skip
    if done:
        check_eye_region(args.output, args.eye_region)
        log.info("%d pair(s) already in %s are kept", len(done), args.output)
    with (
        FaceAligner(size=args.size, margin=args.margin, max_faces=4) as aligner,
        FaceParser(eye_region=args.eye_region) as parser,
    ):
        build = from_template if args.faces else from_import
        names = build(args, aligner, parser, done, summary)
    summary["pairs_kept"] = len(set(names) & done)
    summary["pairs_total"] = len(names)
    summary["names"] = sorted(names)
    if names:
        summary["contact_sheet"] = str(write_contact_sheet(args.output, sorted(names)))
    summary["seconds"] = round(time.time() - start, 2)
    atomic_write_text(args.output / "summary.json", json.dumps(summary, indent=1))
    for item in summary["skipped"]:
        log.warning("skipped %s: %s", item["file"], item["reason"])
    for warning in summary["warnings"]:
        log.warning("%s", warning)
    log.info("%d pair(s) in %s (%d new), %.1f s", len(names), args.output, summary["pairs_made"], summary["seconds"])
    if "error" in summary:
        skipped = "; ".join(f"{Path(s['file']).name} ({s['reason']})" for s in summary["skipped"][:8])
        raise InputError(f"{summary['error']}" + (f"; skipped: {skipped}" if skipped else ""))
    return summary


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

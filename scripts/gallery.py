"""The gallery: four bundled faces, before and after each shipped style, in one image.

    python scripts/gallery.py            # docs/gallery.jpg and docs/gallery.json from weights/styles/*
    python scripts/gallery.py --check    # exit 1, saying which style changed, when the gallery is older than the styles

Rerun it whenever a style changes (tests/test_gallery.py fails until then). The faces are four of
data/samples/faces/ (SCUT-FBP5500, non-commercial research use), of different skin tones and sexes: an Asian
woman and man, a Caucasian woman and man (the file names' AF, AM, CF, CM). Each goes through each style's
fp32 export as `tinybeauty_inference.py --style NAME --full-photo` makes it up (face found, aligned, the
change pasted back). The JSON beside the image records the sha256 of every style's models and style.json:
the check compares those, not file times, which a git checkout resets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common import REPO_ROOT, atomic_save_image, atomic_write_text, make_grid
from data.face_align import FaceAligner, process_full_photo
from data.io import read_rgb, resize_rgb
from deploy.crop_model import MakeupModel
from deploy.styles import DEFAULT_ROOT, list_styles

FACES = [REPO_ROOT / "data" / "samples" / "faces" / f"{name}.jpg" for name in ("AF1", "AM2", "CF3", "CM5")]
IMAGE = REPO_ROOT / "docs" / "gallery.jpg"
CELL = 256  # pixels a face in the image


def record_path(image: Path) -> Path:
    return image.with_suffix(".json")


def style_digests(root: Path) -> dict[str, dict[str, str]]:
    """{style: {file: sha256}} for every complete style under `root`."""
    styles, _ = list_styles(root)
    return {style.name: style.digests() for style in styles}


def make_gallery(root: Path, image: Path) -> dict:
    """Write `image` (rows: the faces; columns: before, then each style) and its JSON record; returns the record."""
    styles, broken = list_styles(root)
    if not styles:
        raise SystemExit(f"error: no complete style in {root}: nothing to show (make_style.py makes one)")
    for name, reason in broken.items():
        print(f"warning: style {name} left out: {reason}", file=sys.stderr)
    rows = []
    with FaceAligner() as aligner:
        models = [MakeupModel(style.model("fp32"), "onnxruntime", threads=0) for style in styles]
        for face in FACES:
            photo = read_rgb(face)
            made = [process_full_photo(photo, model.makeup, aligner)[0] for model in models]
            rows.append([np.asarray(resize_rgb(picture, CELL)) for picture in (photo, *made)])
    grid = make_grid(rows, labels=["before", *(style.title for style in styles)])
    atomic_save_image(grid, image)
    record = {
        "made_by": "python scripts/gallery.py",
        "faces": [face.name for face in FACES],
        "columns": ["before", *(style.name for style in styles)],
        "styles": {style.name: style.digests() for style in styles},
    }
    atomic_write_text(record_path(image), json.dumps(record, indent=1) + "\n")
    return record


def stale(root: Path, image: Path) -> str | None:
    """Why the gallery does not show the styles as they are now, or None when it does."""
    if not image.is_file() or not record_path(image).is_file():
        return f"{image} or {record_path(image)} is missing: run python scripts/gallery.py"
    recorded = json.loads(record_path(image).read_text()).get("styles", {})
    current = style_digests(root)
    changed = sorted(name for name in set(recorded) | set(current) if recorded.get(name) != current.get(name))
    if changed:
        return f"the gallery is older than the style(s) {', '.join(changed)}: run python scripts/gallery.py"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--styles", default=str(DEFAULT_ROOT), help="styles folder (default: %(default)s)")
    parser.add_argument("--output", default=str(IMAGE), help="the image; its record beside it (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the gallery is older than the styles")
    args = parser.parse_args(argv)
    root, image = Path(args.styles), Path(args.output)
    if args.check:
        reason = stale(root, image)
        print(reason or f"{image} shows the styles of {root} as they are")
        return 1 if reason else 0
    record = make_gallery(root, image)
    print(f"{image}: {len(FACES)} faces x {len(record['columns'])} columns ({', '.join(record['columns'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Pair folders side by side on the same faces: the source, then each folder's target (a contact sheet to look at).

    python scripts/compare_sheet.py --out bench/results/dal_eval_draft_classic_red_lip.jpg --count 6 \\
        draft=runs/red/amplified_draft draft+dda=runs/red/amplified_draft_dda truth=runs/red/truth_amplified

Each LABEL=DIR is a pair folder (source/, target/: dda_amplify.py's output, a truth folder); the rows are the first
`--count` names every folder holds (or `--names`), the source taken from the first folder. `--zoom` adds, per row,
the same columns cropped to the eyes and lips (at 2x), where a liner or a lip colour shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from common import make_grid
from data.io import list_images, read_rgb


def crop_band(image: np.ndarray, top: float, bottom: float) -> np.ndarray:
    """The rows between `top` and `bottom` (shares of the height), central half of the width, at 2x."""
    height, width = image.shape[:2]
    band = image[int(top * height) : int(bottom * height), width // 4 : 3 * width // 4]
    return np.asarray(Image.fromarray(band).resize((band.shape[1] * 2, band.shape[0] * 2), Image.Resampling.LANCZOS))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("folders", nargs="+", metavar="LABEL=DIR")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--names", nargs="*", default=None, help="these pairs, in this order")
    parser.add_argument("--zoom", action="store_true", help="also the eyes (30-50% of the height) and lips (62-80%)")
    args = parser.parse_args(argv)
    folders = {}
    for item in args.folders:
        label, sep, folder = item.partition("=")
        if not sep or not (Path(folder) / "target").is_dir():
            parser.error(f"expected LABEL=DIR with DIR/target/, got {item!r}")
        folders[label] = Path(folder)
    common = set.intersection(*({p.stem for p in list_images(f / "target")} for f in folders.values()))
    names = args.names or sorted(common)[: args.count]
    missing = [n for n in names if n not in common]
    if missing:
        parser.error(f"not in every folder: {', '.join(missing)}")
    rows = []
    for name in names:
        images = [read_rgb(next(iter(folders.values())) / "source" / f"{name}.png")]
        images += [read_rgb(folder / "target" / f"{name}.png") for folder in folders.values()]
        rows.append(images)
        if args.zoom:
            rows.append([np.concatenate([crop_band(i, 0.30, 0.50), crop_band(i, 0.62, 0.80)]) for i in images])
    sheet = make_grid(rows, labels=["source", *folders])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(sheet)).convert("RGB").save(args.out, quality=88)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()

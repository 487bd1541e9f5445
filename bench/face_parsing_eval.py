"""Face parser accuracy against hand labels (CelebAMask-HQ), per-class IoU.

    python bench/face_parsing_eval.py --data ../shared/data/celebamask
    python bench/face_parsing_eval.py --data ../shared/data/celebamask --start 50 --limit 50   # a held-out half

DATA holds `images/NAME.jpg` and `masks/NAME.png` (CelebAMask-HQ ids, see data/face_parsing.py). The
hand labels go through `from_celebamask` to the parser's fine convention, and IoU is computed for
regions where left/right is merged (CelebAMask-HQ is not consistent about whose left it means):

    IoU = sum over images of |pred & label| / sum over images of |pred | label|

(the pooled IoU of segmentation benchmarks; the mean of per-image IoUs is printed beside it). A face
the parser misses counts as an all-background prediction. Prints the table, the faces not found and
milliseconds per face, and ends with the same figures as one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from data.face_parsing import FINE_LABELS, FaceParser, from_celebamask
from data.io import ImageReadError, read_labels, read_rgb, resize_labels

F = FINE_LABELS
REGIONS = {  # name -> fine labels merged into it
    "lips": [F["upper_lip"], F["lower_lip"]],
    "eyes": [F["l_eye"], F["r_eye"]],
    "brows": [F["l_brow"], F["r_brow"]],
    "face_skin": [F["skin"], F["nose"]],
    "skin": [F["skin"]],
    "nose": [F["nose"]],
    "upper_lip": [F["upper_lip"]],
    "lower_lip": [F["lower_lip"]],
    "mouth": [F["mouth"]],
}
TARGETS = {"lips": 0.75, "eyes": 0.70, "brows": 0.55, "face_skin": 0.78}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with images/ and masks/ (CelebAMask-HQ ids)")
    parser.add_argument("--start", type=int, default=0, help="first image (sorted by name)")
    parser.add_argument("--limit", type=int, default=0, help="number of images (0: all)")
    return parser.parse_args(argv)


def list_pairs(root: Path) -> list[tuple[Path, Path]]:
    images, masks = root / "images", root / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise SystemExit(f"error: {root} must hold images/ and masks/")
    pairs = []
    for image in sorted(images.iterdir()):
        mask = masks / f"{image.stem}.png"
        if mask.is_file():
            pairs.append((image, mask))
    if not pairs:
        raise SystemExit(f"error: no images/NAME.* with masks/NAME.png in {root}")
    return pairs


def main(argv=None) -> dict:
    args = parse_args(argv)
    pairs = list_pairs(Path(args.data))[args.start :]
    pairs = pairs[: args.limit] if args.limit else pairs
    inter = {k: 0 for k in REGIONS}
    union = {k: 0 for k in REGIONS}
    per_image = {k: [] for k in REGIONS}
    not_found, seconds = [], 0.0
    with FaceParser() as parser:
        parser.parse(np.zeros((64, 64, 3), np.uint8))  # load the model outside the timing
        for image_path, mask_path in pairs:
            try:
                image, hand = read_rgb(image_path), read_labels(mask_path)
            except ImageReadError as err:
                raise SystemExit(f"error: {err}") from None
            label = from_celebamask(resize_labels(hand, (image.shape[1], image.shape[0])))
            start = time.perf_counter()
            result = parser.parse(image)
            seconds += time.perf_counter() - start
            if result is None:
                not_found.append(image_path.name)
                pred = np.zeros_like(label)
            else:
                pred = result.fine
            for name, ids in REGIONS.items():
                p, t = np.isin(pred, ids), np.isin(label, ids)
                i, u = int((p & t).sum()), int((p | t).sum())
                inter[name] += i
                union[name] += u
                if u:
                    per_image[name].append(i / u)
    iou = {k: inter[k] / union[k] if union[k] else float("nan") for k in REGIONS}
    mean_iou = {k: float(np.mean(v)) if v else float("nan") for k, v in per_image.items()}
    ms = 1000 * seconds / max(len(pairs), 1)

    print(f"{'region':<10} {'IoU':>6} {'mean/img':>9} {'target':>7}")
    for name in REGIONS:
        target = TARGETS.get(name)
        mark = "" if target is None else ("  ok" if iou[name] >= target else "  BELOW")
        print(f"{name:<10} {iou[name]:6.3f} {mean_iou[name]:9.3f} {target if target else '':>7}{mark}")
    print(f"faces: {len(pairs)}, not found: {len(not_found)} {not_found[:5] if not_found else ''}")
    print(f"ms per face (landmarks + regions, CPU): {ms:.1f}")
    summary = {
        "faces": len(pairs),
        "not_found": len(not_found),
        "ms_per_face": round(ms, 1),
        "iou": {k: round(v, 4) for k, v in iou.items()},
        "mean_image_iou": {k: round(v, 4) for k, v in mean_iou.items()},
        "targets_met": all(iou[k] >= v for k, v in TARGETS.items()),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

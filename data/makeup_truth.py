"""Ground truth for a makeup template, and how close a pair set comes to it.

    python -m data.makeup_truth AMPLIFIED_DIR configs/makeup/classic_red_lip.yaml OUT_DIR

A makeup template (configs/makeup/*.yaml) rendered on a face is that face's true made-up version.
`render_truth` renders it on the very crops a pair folder holds (each `source/NAME.png` parsed anew),
so amplified pairs can be scored against the truth on the same pixels; `score` gives the figures
`bench/dal_eval.py` and the demo report use ("over the face" = every pixel with a makeup label):

- `psnr_db`: prediction vs truth over the whole image; `identity_psnr_db`: source vs truth;
- `r2`, `r2_lips`, `r2_eyes`: R^2 of the makeup residual, 1 - SSE/SST, SSE = sum (pred - truth)^2,
  SST = sum (residual - its mean)^2, residual = truth - source, pooled over faces and channels;
- `lip_change_ratio`: mean |pred - source| over the lips / mean |truth - source| over the lips;
- `lip_error_reduction`: 1 - SSE(pred, truth) / SSE(source, truth) over the lips (0: no closer to the
  truth than the plain face; R^2 centres SST on the residual's mean, this measures against no makeup).

The command writes OUT_DIR/{source,target,mask}/ (the truth pairs) and OUT_DIR/summary.json (the
scores of AMPLIFIED_DIR's targets against them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from common import atomic_save_image, atomic_write_text, log
from data.face_parsing import FaceParser
from data.io import list_images, read_labels, read_rgb
from data.makeup_render import load_template, render_makeup

EYES, LIPS = 1, 2


def _r2(pred: np.ndarray, truth: np.ndarray, source: np.ndarray, region: np.ndarray) -> float | None:
    if not region.any():
        return None
    residual = (truth.astype(np.float64) - source)[region]  # (P, 3)
    error = (pred.astype(np.float64) - truth)[region]
    sst = float(((residual - residual.mean(0)) ** 2).sum())
    return None if sst == 0 else round(1.0 - float((error**2).sum()) / sst, 4)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 99.0 if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def score(preds, truths, sources, masks) -> dict:
    """The figures above for sequences of (H, W, 3) uint8 images and (H, W) uint8 labels."""
    pred, truth, source, mask = (np.stack(list(x)) for x in (preds, truths, sources, masks))
    lips = mask == LIPS
    truth_lips = float(np.abs(truth.astype(np.float64) - source)[lips].mean()) if lips.any() else 0.0
    pred_lips = float(np.abs(pred.astype(np.float64) - source)[lips].mean()) if lips.any() else 0.0
    return {
        "faces": int(len(pred)),
        "psnr_db": round(float(np.mean([_psnr(p, t) for p, t in zip(pred, truth)])), 3),
        "identity_psnr_db": round(float(np.mean([_psnr(s, t) for s, t in zip(source, truth)])), 3),
        "r2": _r2(pred, truth, source, mask > 0),
        "r2_lips": _r2(pred, truth, source, lips),
        "r2_eyes": _r2(pred, truth, source, mask == EYES),
        "lip_change_ratio": round(pred_lips / truth_lips, 4) if truth_lips else None,
        "lip_error_reduction": _error_reduction(pred, truth, source, lips),
    }


def _error_reduction(pred, truth, source, region) -> float | None:
    """1 - SSE(pred, truth) / SSE(source, truth) in a region: 0 = no closer than the plain face, 1 = the truth."""
    if not region.any():
        return None
    before = float(((source.astype(np.float64) - truth)[region] ** 2).sum())
    after = float(((pred.astype(np.float64) - truth)[region] ** 2).sum())
    return None if before == 0 else round(1.0 - after / before, 4)


def render_truth(pairs_dir: str | Path, template, out_dir: str | Path) -> list[str]:
    """The template on each `pairs_dir/source/*` crop, written as a pair folder; returns the names rendered.

    A crop on which the face parser finds no face is left out (logged). Files are written atomically and
    existing truth pairs are kept, so a rerun only renders what is missing.
    """

    pairs_dir, out_dir = Path(pairs_dir), Path(out_dir)
    names = []
    with FaceParser() as parser:
        for path in list_images(pairs_dir / "source"):
            target_path = out_dir / "target" / f"{path.stem}.png"
            if not target_path.exists():
                source = read_rgb(path)
                parse = parser.parse(source)
                if parse is None:
                    log.warning("truth: no face parse on %s, left out", path)
                    continue
                atomic_save_image(source, out_dir / "source" / f"{path.stem}.png")
                atomic_save_image(np.asarray(parse.makeup, np.uint8), out_dir / "mask" / f"{path.stem}.png")
                atomic_save_image(render_makeup(source, parse, template), target_path)
            names.append(path.stem)
    return names


def load_pairs(
    folder: str | Path, names: list[str] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (source, target, mask) arrays of a pair folder."""
    folder = Path(folder)
    names = names if names is not None else [p.stem for p in list_images(folder / "source")]
    return {
        name: (
            read_rgb(folder / "source" / f"{name}.png"),
            read_rgb(folder / "target" / f"{name}.png"),
            read_labels(folder / "mask" / f"{name}.png"),
        )
        for name in names
    }


def score_against_truth(pairs_dir: str | Path, template, truth_dir: str | Path) -> dict:
    """Render the truth for `pairs_dir` into `truth_dir` and score `pairs_dir`'s targets against it."""
    names = render_truth(pairs_dir, template, truth_dir)
    made, truth = load_pairs(pairs_dir, names), load_pairs(truth_dir, names)
    return score(
        [made[n][1] for n in names],
        [truth[n][1] for n in names],
        [made[n][0] for n in names],
        [made[n][2] for n in names],
    )


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        raise SystemExit("usage: python -m data.makeup_truth PAIRS_DIR TEMPLATE_YAML OUT_DIR")

    pairs_dir, template_path, out_dir = argv
    if not (Path(pairs_dir) / "source").is_dir():
        raise SystemExit(f"error: {pairs_dir} has no source/ folder (a pair folder such as dda_amplify.py's output)")
    template = load_template(template_path)
    scores = score_against_truth(pairs_dir, template, out_dir)
    summary = {"pairs": str(pairs_dir), "template": str(template.name), "template_path": template_path, **scores}
    atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

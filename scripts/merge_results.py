"""Several runs' results JSONs as one results file: the runs side by side, and a table of the figures that matter.

    python scripts/merge_results.py --out bench/results/dal_eval_region_calibration.json \\
        red_off=/work/runs/results/red_off_cal2.json red_on=/work/runs/results/red_on_cal2.json ...

Each NAME=FILE becomes `runs/NAME` (the JSON as the bench wrote it). `table` holds, per run, the figures
the README and the experiment log quote: the DDA on its seeds, the amplified faces against the truth (with
the calibrated and the learned FGMM weights when the run has both), and TinyBeauty's arms when it ran them.
Missing figures are left out, never filled in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import atomic_write_text

# (name in the table, key path in a dal_eval JSON)
FIGURES = [
    ("seeds_r2", "dda_on_seeds/r2"),
    ("seeds_psnr_db", "dda_on_seeds/psnr_db"),
    ("seeds_r2_learned_fgmm", "dda_on_seeds_learned_fgmm/r2"),
    ("seeds_psnr_db_learned_fgmm", "dda_on_seeds_learned_fgmm/psnr_db"),
    ("unseen_faces", "amplified_vs_truth/faces"),
    ("unseen_r2", "amplified_vs_truth/r2"),
    ("unseen_lip_share", "amplified_vs_truth/lip_change_ratio"),
    ("unseen_r2_eyes", "amplified_vs_truth/r2_eyes"),
    ("unseen_r2_lips", "amplified_vs_truth/r2_lips"),
    ("unseen_psnr_db", "amplified_vs_truth/psnr_db"),
    ("draft_leave_one_out_psnr_db", "draft_on_seeds/psnr_db"),
    ("unseen_r2_learned_fgmm", "amplified_vs_truth_learned_fgmm/r2"),
    ("unseen_lip_share_learned_fgmm", "amplified_vs_truth_learned_fgmm/lip_change_ratio"),
    ("unseen_r2_area_masks", "amplified_vs_truth_area/r2"),
    ("unseen_r2_area_masks_learned_fgmm", "amplified_vs_truth_learned_fgmm_area/r2"),
    ("ceiling_r2", "amplified_vae_ceiling/r2"),
    ("calibration_seconds", "dda_calibration/seconds"),
    ("tinybeauty_amplified_psnr_db", "tinybeauty/amplified/psnr_db"),
    ("tinybeauty_seeds_only_psnr_db", "tinybeauty/seeds_only/psnr_db"),
    ("tinybeauty_truth_psnr_db", "tinybeauty/truth/psnr_db"),
    ("tinybeauty_identity_psnr_db", "tinybeauty/amplified/identity_psnr_db"),
    ("gain_amplified_over_seeds_db", "gain_amplified_over_seeds_db"),
    ("gap_truth_minus_amplified_db", "gap_truth_minus_amplified_db"),
    ("share_of_gap_closed", "share_of_gap_closed"),
]


def lookup(data, path: str):
    for key in path.split("/"):
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def table_row(run: dict) -> dict:
    row = {}
    for name, path in FIGURES:
        value = lookup(run, path)
        if isinstance(value, (int, float)):
            row[name] = value
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=FILE")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--note", default="", help="one line on what the runs compare")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, sep, file = item.partition("=")
        if not sep or not name:
            parser.error(f"expected NAME=FILE, got {item!r}")
        path = Path(file)
        if not path.is_file():
            parser.error(f"{path}: no such results file (for run {name!r})")
        runs[name] = json.loads(path.read_text())
    merged = {"note": args.note, "table": {name: table_row(run) for name, run in runs.items()}, "runs": runs}
    atomic_write_text(args.out, json.dumps(merged, indent=1) + "\n")
    print(json.dumps(merged["table"], indent=1))
    return merged


if __name__ == "__main__":
    main()

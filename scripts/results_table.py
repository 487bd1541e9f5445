"""The README's results table, generated from the results JSONs in bench/results/.

    python scripts/results_table.py           # rewrite the block between the markers in README.md
    python scripts/results_table.py --check   # exit 1 and print the difference when README.md is stale

A row is one line of ROWS: the label, the JSON under bench/results/, the key path into it ("/" between
keys, a number indexes a list), the format of the value and the goal as written in the issue. A new
experiment's headline figure is one more line there; the figures themselves stay in the JSON.
Plain Python (stdlib only): no project imports, so it runs before the environment exists.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RESULTS = REPO / "bench" / "results"
START = "<!-- results:start -->"
END = "<!-- results:end -->"

# (label, JSON in bench/results/, key path, format, goal)
# fmt: off
ROWS = [
    ("TinyBeauty on `pairs_style1`: validation PSNR, 50 epochs", "tinybeauty_pairs_style1_summary.json", "best_val_psnr", "{:.2f} dB", ">= 37.5 dB"),
    ("TinyBeauty int8 ONNX: file size", "tinybeauty_pairs_style1_export.json", "int8/size_kb", "{:.1f} KB", "< 100 KB"),
    ("TinyBeauty int8 ONNX: PSNR lost against PyTorch", "tinybeauty_pairs_style1_export.json", "int8/drop_db_vs_pytorch", "{:.3f} dB", "<= 0.1 dB"),
    ("TinyBeauty, ONNX Runtime fp32, batch 1, 256x256 (previous default's layers)", "tinybeauty_bench.json", "ort_fp32/batch1_ms", "{:.2f} ms", "10 ms"),
    ("Android int8 `.tflite` (full-integer), shipped `classic_red_lip`: file size", "mobile_export_styles.json", "styles/classic_red_lip/tflite/int8/size_kb", "{:.1f} KB", "< 100 KB"),
    ("the same: PSNR lost against PyTorch, `classic_red_lip`", "mobile_export_styles.json", "styles/classic_red_lip/tflite/int8/drop_db_vs_pytorch", "{:.3f} dB", "<= 0.3 dB"),
    ("the same, `smoky_eye` (the worst of the three)", "mobile_export_styles.json", "styles/smoky_eye/tflite/int8/drop_db_vs_pytorch", "{:.3f} dB", "<= 0.3 dB"),
    ("the same, LiteRT interpreter (XNNPACK), batch 1, one thread of an AMD EPYC (not a phone)", "mobile_bench.json", "results/6/batch1_ms", "{:.2f} ms", ""),
    ("the makeup draft (the default amplifier), `classic_red_lip`: makeup R^2 of 295 unseen faces", "dal_eval_draft.json", "table/red_draft/unseen_r2", "{:.2f}", ">= 0.75"),
    ("the same: eye R^2 (the liner)", "dal_eval_draft.json", "table/red_draft/unseen_r2_eyes", "{:.2f}", ">= 0.5"),
    ("the same on `smoky_eye`: makeup R^2", "dal_eval_draft.json", "table/smoky_draft/unseen_r2", "{:.2f}", ">= 0.75"),
    ("the same on `smoky_eye`: eye R^2", "dal_eval_draft.json", "table/smoky_draft/unseen_r2_eyes", "{:.2f}", ">= 0.5"),
    ("the same on `berry_blush`: makeup R^2", "dal_eval_draft.json", "table/berry_draft/unseen_r2", "{:.2f}", ">= 0.75"),
    ("the same on `berry_blush`: eye R^2", "dal_eval_draft.json", "table/berry_draft/unseen_r2_eyes", "{:.2f}", ">= 0.5"),
    ("TinyBeauty on the drafted pairs, gain over the 5 seeds alone, `classic_red_lip`", "dal_eval_draft.json", "table/red_draft/gain_amplified_over_seeds_db", "+{:.2f} dB", ">= +2 dB"),
    ("the same, `berry_blush`", "dal_eval_draft.json", "table/berry_draft/gain_amplified_over_seeds_db", "+{:.2f} dB", ">= +2 dB"),
    ("learned style `pairs_style1`: TinyBeauty on drafted pairs, share of the seeds-to-truth gap closed", "dal_eval_draft.json", "table/style_draft/share_of_gap_closed", "{:.2f}", ">= 0.8"),
    ("the same pairs, TinyBeauty's other seed (its run-to-run spread)", "dal_eval_draft.json", "table/style_draft_tbseed1/share_of_gap_closed", "{:.2f}", ">= 0.8"),
    ("the same with `draft+dda` (the DDA corrects the draft)", "dal_eval_draft.json", "table/style_draftdda/share_of_gap_closed", "{:.2f}", "above the draft by more than the spread"),
    ("the DDA alone (region-conditioned, calibrated, FGMM colour), `classic_red_lip`: makeup R^2 of 295 unseen faces", "dal_eval_fgmm_colour.json", "table/red_colour/unseen_r2", "{:.2f}", ""),
    ("the DDA alone, `pairs_style1`: share of the gap closed", "dal_eval_fgmm_colour.json", "table/style_colour/share_of_gap_closed", "{:.2f}", ""),
    ("the DDA's ceiling: makeup R^2 of a perfect latent edit at 128 px, `classic_red_lip`", "dal_eval_vae_ceiling.json", "shipped_prior/ceilings/crl_128/r2", "{:.2f}", ""),
    ("stage 2 steps/s, prior at 128 px on the CPU, 30 epochs: after / before the latent cache", "dda_speed_ab_30.json", "training_steps_per_second/ratio_of_medians", "{:.2f}x", ">= 1.15x"),
    ("stage 3 images/s, prior at 128 px on the CPU: after / before the overlap", "dda_speed_ab_30.json", "amplification_images_per_second/ratio_of_medians", "{:.2f}x", ">= 1.3x"),
    ("SD 1.5 at 512, DDA training step, fp16, batch 1: peak on a 16 GB V100, predicted (no GPU)", "sd15_path.json", "accounting/training_step/0/v100/device_gib", "{:.1f} GiB", "< 15.8 GiB"),
    ("video, 720p, fp32 ONNX, both smoothings", "video_bench.json", "goals/fps_720p_tinybeauty_fp32/value", "{:.1f} fps", ">= 30 fps"),
    ("web page, fp32 ONNX, one WASM thread: webcam frame 640x480", "web_bench.json", "goal/value_ms", "{:.1f} ms", "<= 40 ms"),
    ("face parsing: lips IoU, 100 CelebAMask-HQ faces", "face_parsing_eval.json", "iou/lips", "{:.3f}", ">= 0.75"),
]
# fmt: on


def lookup(data, path: str):
    """The value at `path` ("a/b/0/c") in a parsed JSON."""
    for key in path.split("/"):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


def render_rows(rows=ROWS, results: Path = RESULTS) -> list[str]:
    """The table's markdown lines, each value read from its JSON."""
    lines = ["| result | value | goal | JSON |", "|---|---|---|---|"]
    for label, name, path, fmt, goal in rows:
        data = json.loads((results / name).read_text())
        try:
            value = lookup(data, path)
        except (KeyError, IndexError, ValueError, TypeError) as err:
            raise SystemExit(f"{results / name}: no value at key path {path!r} ({err!r})") from err
        lines.append(f"| {label} | {fmt.format(value)} | {goal} | [{name}](bench/results/{name}) |")
    return lines


def split_readme(text: str) -> tuple[str, list[str], str]:
    """README.md as (text up to and including START, the block's lines, text from END on)."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise SystemExit(f"{README}: needs exactly one {START} ... {END} block")
    head, rest = text.split(START, 1)
    block, tail = rest.split(END, 1)
    return head + START, block.strip("\n").splitlines(), END + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md's block differs from the JSONs")
    args = parser.parse_args(argv)
    text = README.read_text()
    head, block, tail = split_readme(text)
    table = render_rows()
    if args.check:
        if block == table:
            return 0
        diff = difflib.unified_diff(block, table, "README.md (now)", "README.md (from the JSONs)", lineterm="")
        print("\n".join(diff))
        print("README.md's results table is stale: run python scripts/results_table.py", file=sys.stderr)
        return 1
    new = head + "\n" + "\n".join(table) + "\n" + tail
    if new != text:
        README.write_text(new)
        print(f"rewrote the results table in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

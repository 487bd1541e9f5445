"""Build `summary.md`, `summary.png` and `summary.json` for a demo run folder from the stages' own files.

    python demo_report.py runs/demo

Every figure in the report is read from a file the stage wrote (its `summary.json`, the export
report, the run folder's images), so the report cannot disagree with the run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from common import atomic_save_image, atomic_write_text


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _latest(folder: Path, pattern: str) -> Path | None:
    """The file matching `pattern` with the highest number in its name (e.g. samples_epoch_10.png)."""

    def number(p: Path) -> int:
        digits = "".join(ch if ch.isdigit() else " " for ch in p.stem).split()
        return int(digits[-1]) if digits else -1

    found = sorted(folder.glob(pattern), key=number)
    return found[-1] if found else None


def _rel(path: str | Path | None, root: Path) -> str:
    if not path:
        return "-"
    path = Path(path)
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _weights(weights: dict | None) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in (weights or {}).items()) or "-"


def collect(out: Path) -> dict:
    """The figures of each stage, straight from its files."""
    seed = _read_json(out / "seed_pairs" / "summary.json")
    dda = _read_json(out / "dda_model" / "summary.json")
    amp = _read_json(out / "amplified" / "summary.json")
    truth = _read_json(out / "amplified_truth" / "summary.json")
    tb = _read_json(out / "tinybeauty_model" / "summary.json")
    export = _read_json(out / "export" / "export_report.json")
    timings = _read_json(out / "timings.json")
    photo_out = out / "photo_makeup"
    return {
        "seed_pairs": {
            "faces_in": str(seed.get("mode", "")),
            "template": (seed.get("template") or {}).get("name"),
            "pairs": seed.get("pairs_total"),
            "size": seed.get("size"),
            "names": seed.get("names", []),
            "seconds": seed.get("seconds"),
            "image": seed.get("contact_sheet"),
        },
        "dda": {
            "amplifier": dda.get("amplifier", "dda"),
            "draft": (dda.get("draft") or {}).get("leave_one_out_mean"),
            "draft_image": out / "dda_model" / "draft_samples.png" if dda.get("draft") else None,
            "pretrained": dda.get("pretrained"),
            "pairs": dda.get("num_pairs"),
            "resolution": dda.get("resolution"),
            "epochs": dda.get("epochs"),
            "steps": dda.get("steps"),
            "rdm_alpha": dda.get("rdm_alpha"),
            "fgmm_weights": dda.get("fgmm_weights"),
            "final_loss": dda.get("final_loss"),
            "trainable_params": dda.get("trainable_params"),
            "seconds": dda.get("seconds"),
            "image": _latest(out / "dda_model", "sample_epoch_*.png"),
        },
        "amplify": {
            "inputs": amp.get("inputs"),
            "pairs": amp.get("pairs"),
            "skipped": amp.get("skipped"),
            "skipped_by_reason": amp.get("skipped_by_reason"),
            "seconds_per_image": amp.get("seconds_per_image"),
            "seconds": amp.get("seconds"),
            "image": amp.get("contact_sheet"),
        },
        "truth": {k: truth.get(k) for k in ("template", "faces", "r2", "r2_lips", "r2_eyes", "lip_change_ratio")},
        "tinybeauty": {
            "pairs_train": tb.get("pairs_train"),
            "pairs_val": tb.get("pairs_val"),
            "params": tb.get("params"),
            "gmacs": tb.get("gmacs"),
            "size_kb": tb.get("size_kb"),
            "identity_psnr": tb.get("identity_psnr"),
            "best_val_psnr": tb.get("best_val_psnr"),
            "epochs": tb.get("epochs"),
            "seconds": tb.get("seconds"),
            "image": _latest(out / "tinybeauty_model", "samples_epoch_*.png"),
        },
        "inference": {
            "input": out / "photo" / "two_faces.png",
            "image": photo_out / "two_faces.png" if (photo_out / "two_faces.png").is_file() else None,
        },
        "export": export,
        "timings": timings,
    }


def _export_rows(export: dict) -> list[tuple[str, str]]:
    rows = []
    for name in ("fp32", "int8"):
        info = export.get(name) or {}
        if info:
            rows.append(
                (
                    f"ONNX {name}",
                    f"{_fmt(info.get('size_kb'), 1)} KB, max abs error vs PyTorch {_fmt(info.get('max_abs_error'), 4)}, "
                    f"PSNR vs PyTorch {_fmt(info.get('psnr_vs_pytorch'))} dB",
                )
            )
    return rows


def _amplifier_rows(d: dict, timings: dict, out: Path) -> list[str]:
    """Stage 2's rows: the makeup draft (amplifier draft, draft+dda) and the DDA (draft+dda, dda)."""
    rows = []
    if d["draft"]:
        rows.append(
            f"| 2. makeup draft (`amplifier: {d['amplifier']}`) | {_fmt(d['pairs'])} seed pairs and their landmarks "
            f"| the draft in `dda_model/dda_final.pt` | each seed drafted from the others: {_fmt(d['draft']['psnr_db'])} dB "
            f"against its target (the plain face {_fmt(d['draft']['identity_psnr_db'])} dB) "
            f"| {_fmt(timings.get('dda'), 1) if d['amplifier'] == 'draft' else 'in the next row'} "
            f"| `{_rel(d['draft_image'], out)}` |"
        )
    if d["amplifier"] != "draft":
        on = "the seeds' drafts" if d["draft"] else "seed pairs"
        rows.append(
            f"| 2. DDA training | {_fmt(d['pairs'])} {on}, `{_rel(d['pretrained'], out)}` | `dda_model/dda_final.pt`, "
            f"LoRA safetensors | {_fmt(d['epochs'])} epochs, {_fmt(d['steps'])} steps at {_fmt(d['resolution'])}px, "
            f"RDM alpha {_fmt(d['rdm_alpha'], 4)}, FGMM {_weights(d['fgmm_weights'])} | {_fmt(timings.get('dda'), 1)} "
            f"| `{_rel(d['image'], out)}` |"
        )
    return rows


def write_markdown(out: Path, figures: dict) -> Path:
    s, d, a, t, timings = (figures[k] for k in ("seed_pairs", "dda", "amplify", "tinybeauty", "timings"))
    lines = [
        "# Demo run: Data Amplify Learning end to end",
        "",
        f"Amplifier: `{d['amplifier']}`"
        + (f", over the base model `{_rel(d['pretrained'], out)}`" if d["amplifier"] != "draft" else "")
        + ". Stage 3 is measured against the truth: the",
        "template rendered on the very crops the amplifier wrote (`amplified_truth/`). Every figure below is",
        "read from the stage's own files in this folder. Overview: `summary.png`.",
        "",
        "| stage | in | out | figures | seconds | look at |",
        "|---|---|---|---|---|---|",
        f"| 1. seed pairs | sample faces, template `{_fmt(s['template'])}` | {_fmt(s['pairs'])} pairs at "
        f"{_fmt(s['size'])}px in `seed_pairs/` | faces: {', '.join(s['names'])} | {_fmt(timings.get('seed_pairs'), 1)} "
        f"| `{_rel(s['image'], out)}` |",
        *_amplifier_rows(d, timings, out),
        f"| 3. amplification | {_fmt(a['inputs'])} unseen faces | {_fmt(a['pairs'])} pairs in `amplified/`, "
        f"{_fmt(a['skipped'])} skipped | {_fmt(a['seconds_per_image'])} s per image | {_fmt(timings.get('amplify'), 1)} "
        f"| `{_rel(a['image'], out)}` |",
        f"| 3. measured | amplified targets vs the template's truth on the same crops | `amplified_truth/` | "
        f"makeup R^2 {_fmt(figures['truth']['r2'])} (lips {_fmt(figures['truth']['r2_lips'])}, eyes "
        f"{_fmt(figures['truth']['r2_eyes'])}), lips changed {_pct(figures['truth']['lip_change_ratio'])} of the truth's "
        f"change, {_fmt(figures['truth']['faces'])} faces | {_fmt(timings.get('truth'), 1)} | `amplified_truth/summary.json` |",
        f"| 4. TinyBeauty | {_fmt(t['pairs_train'])} train / {_fmt(t['pairs_val'])} val amplified pairs "
        f"| `tinybeauty_model/tinybeauty_best_psnr.pt` | {_fmt(t['params'])} parameters, {_fmt(t['gmacs'], 3)} GMACs, "
        f"val PSNR {_fmt(t['best_val_psnr'])} dB (identity {_fmt(t['identity_psnr'])} dB), {_fmt(t['epochs'])} epochs "
        f"| {_fmt(timings.get('tinybeauty'), 1)} | `{_rel(t['image'], out)}` |",
        f"| inference | `photo/two_faces.png` | `photo_makeup/two_faces.png` | full-photo mode: detect, crop, apply, "
        f"paste back | {_fmt(timings.get('inference'), 1)} | `{_rel(figures['inference']['image'], out)}` |",
    ]
    for name, text in _export_rows(figures["export"]):
        lines.append(f"| export | best checkpoint | `export/tinybeauty_{name.split()[-1]}.onnx` | {text} "
                     f"| {_fmt(timings.get('export'), 1)} | `export/export_report.json` |")  # fmt: skip
    size_kb = t["size_kb"] or {}
    lines += [
        "",
        f"TinyBeauty model size: {', '.join(f'{k} {_fmt(v, 1)} KB' for k, v in size_kb.items())}.",
        f"Total: {_fmt(sum(v for v in timings.values() if isinstance(v, (int, float))), 1)} s.",
        "",
        "Per-stage logs are in `logs/`; each stage folder holds its resolved `config.yaml`, log and `summary.json`.",
    ]
    return atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")


def _amplifier_panels(d: dict) -> list[tuple[str, Path | None]]:
    panels = []
    if d["draft_image"]:
        panels.append(("2. makeup draft (source | drafted from the other seeds | target)", d["draft_image"]))
    if d["amplifier"] != "draft":
        panels.append(("2. DDA samples (source | DDA | target)", d["image"]))
    return panels


def write_overview(out: Path, figures: dict, height: int = 320, per_row: int = 3) -> Path | None:
    """One PNG: each stage's main picture, titled, three to a row."""
    panels = [
        ("1. seed pairs (source | target | mask)", figures["seed_pairs"]["image"]),
        *_amplifier_panels(figures["dda"]),
        ("3. amplified pairs", figures["amplify"]["image"]),
        ("4. TinyBeauty validation samples", figures["tinybeauty"]["image"]),
        ("full photo: before", figures["inference"]["input"]),
        ("full photo: after (TinyBeauty, pasted back)", figures["inference"]["image"]),
    ]
    tiles = []
    for title, path in panels:
        if path and Path(path).is_file():
            image = Image.open(path).convert("RGB")
            scale = min(height / image.height, 1.6 * height / image.width)
            tiles.append(
                (title, image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale)))))
            )
    if not tiles:
        return None
    pad, title_h = 10, 18
    rows = [tiles[i : i + per_row] for i in range(0, len(tiles), per_row)]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def tile_width(title: str, image: Image.Image) -> int:
        return max(image.width, round(measure.textlength(title)))

    width = max(sum(tile_width(*tile) for tile in row) + pad * (len(row) + 1) for row in rows)
    canvas = Image.new("RGB", (width, len(rows) * (height + title_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        x, y = pad, pad + r * (height + title_h + pad)
        for title, image in row:
            draw.text((x, y), title, fill=(0, 0, 0))
            canvas.paste(image, (x, y + title_h))
            x += tile_width(title, image) + pad
    return atomic_save_image(canvas, out / "summary.png")


def write_report(out: str | Path) -> Path:
    out = Path(out)
    figures = collect(out)
    serialisable = json.loads(json.dumps(figures, default=str))
    atomic_write_text(out / "summary.json", json.dumps(serialisable, indent=1))
    write_overview(out, figures)
    return write_markdown(out, figures)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python demo_report.py RUN_DIR")
    print(write_report(sys.argv[1]))

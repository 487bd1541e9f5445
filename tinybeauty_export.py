"""Export a trained TinyBeauty to ONNX (fp32 and int8), LiteRT and Core ML, and check each against PyTorch.

    python tinybeauty_export.py --checkpoint tinybeauty_model/tinybeauty_best_psnr.pt --output export/
    python tinybeauty_export.py --checkpoint CKPT --output DIR --format onnx,tflite,coreml   # phones too
    python tinybeauty_export.py --checkpoint CKPT --output DIR --data ../shared/data/pairs_style1 --quant dynamic

`--format` picks the files (default onnx): `tflite` writes DIR/tinybeauty_fp32.tflite and a full-integer
DIR/tinybeauty_int8.tflite for Android, `coreml` DIR/tinybeauty.mlpackage (fp16 ML program) for iOS. Their
converters run in their own environment (`bash scripts/setup_mobile.sh` makes .venv-mobile once; or set
$TINYBEAUTY_MOBILE_PYTHON), through deploy/mobile_export.py, which documents their inputs and outputs; their
parity, sizes and checks land in DIR/mobile_report.json and under "phone" in the report below.

Writes DIR/tinybeauty_fp32.onnx and DIR/tinybeauty_int8.onnx: input `source`, output `makeup`, both
NCHW float32 in [-1, 1] at the training size (dynamic batch), and an optional float32 scalar input
`intensity` (shape [], default 1; 0 to 1.5 as `tinybeauty_inference.py --intensity`): makeup =
clamp(source + intensity x (model(source) - source)), so 0 gives the source back exactly and 1 (or
feeding `source` alone) the model's output. It is a graph input with an initializer of the same
name, ONNX's optional input with a default: ONNX Runtime lists it under
get_overridable_initializers(), not get_inputs(), and logs a warning that it will not constant-fold
it (expected). int8 is onnxruntime's static quantization in QOperator format (QLinearConv),
per-channel weights, calibrated on real training faces; the element-wise tail (`input + residual`,
Clip, the intensity blend) stays float and reads the float `source` (with `--onnx-int8 qdq` too, where
the quantizer used to hand it a quantised copy of the face). Measured on the pairs_style1 model (30
held-out faces, 2 CPU cores), `model.stem: space_to_depth` (the default), before the intensity
input: qoperator 88.8 KB, -0.03 dB vs PyTorch (its stride-2 transposed-conv head stays float); with
`stem: full`: qoperator 87 KB, -0.02 dB, 17.5 ms; qdq 90 KB, -0.10 dB, 19.4 ms; dynamic 83 KB, -0.00
dB but 300 ms (ConvInteger is slow on CPU). The intensity input adds 0.3 KB to the int8 file of the
default architecture (88.8 -> 89.1 KB) and about 1.5% to ORT fp32 batch 1 at 256 (one interleaved
run on a loaded 2-core machine). The check runs PyTorch, ORT fp32 and ORT int8 on held-out faces
(the run's split.json validation names when it sits next to the checkpoint): max abs error and PSNR
between outputs, PSNR against the targets, file sizes, and each model at intensity 0, 1 and 0.5.
DIR/export_report.json holds it all; `--strict` exits with status 1 when a check fails (fp32 parity,
int8 within 0.3 dB of PyTorch, int8 < 100 KB, intensity 0 gives the source exactly and 1 the default
output, fp32 at 0.5 matches PyTorch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from common import atomic_write_text, from_uint8, load_checkpoint, log, psnr, run_cli, setup_logging
from data.io import read_rgb, resize_rgb
from data.paired import DatasetError, scan_pairs
from deploy.makeup import blend, parity
from deploy.mobile_env import PHONE_FORMATS, export_phone, mobile_python
from deploy.onnx_export import DEFAULT_INTENSITY, INTENSITY, export_onnx, ort_run, ort_session, quantize_int8
from errors import InputError
from models.tinybeauty import load_tinybeauty

FORMATS = ("onnx", *PHONE_FORMATS)
INT8_LIMIT_KB = 100.0  # the seed's target for the phone model
MAX_INT8_DROP_DB = 0.3
MAX_FP32_ABS_ERROR = 1e-3


def parse_formats(text: str) -> tuple[str, ...]:
    """'onnx,tflite' -> ("onnx", "tflite"); an unknown name lists the valid ones."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        hint = " (the int8 ONNX's layout is --onnx-int8 now)" if set(unknown) & {"qoperator", "qdq"} else ""
        raise InputError(f"unknown --format {', '.join(unknown) or repr(text)}; valid: {', '.join(FORMATS)}, "
                         f"comma-separated{hint}")  # fmt: skip
    return names


def load_faces(names: list[str], by_name: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, S, S) float32 sources and targets in [-1, 1]."""
    sources = [from_uint8(np.array(resize_rgb(read_rgb(by_name[n].source), size))) for n in names]
    targets = [from_uint8(np.array(resize_rgb(read_rgb(by_name[n].target), size))) for n in names]
    return torch.stack(sources).numpy(), torch.stack(targets).numpy()


def real_faces(checkpoint: Path, data_root: str, size: int, n_calib: int, n_eval: int, seed: int):
    """Calibration faces from the training split, check faces from the validation split (split.json)."""
    try:
        pairs = {p.name: p for p in scan_pairs(data_root, verify=False).pairs}
    except DatasetError as err:
        raise InputError(f"real faces are needed for calibration and the check: {err} (use --data ROOT)") from None
    split_path = checkpoint.parent / "split.json"
    if split_path.is_file():
        split = json.loads(split_path.read_text())
        train, val = [n for n in split["train"] if n in pairs], [n for n in split["val"] if n in pairs]
    else:
        names = sorted(pairs)
        order = np.random.default_rng(seed).permutation(len(names))
        val = [names[i] for i in order[:n_eval]]
        train = [names[i] for i in order[n_eval:]] or val
    log.info("faces from %s: %d for calibration, %d for the check (%s)", data_root, min(n_calib, len(train)),
             min(n_eval, len(val)), "split.json" if split_path.is_file() else "seeded pick")  # fmt: skip
    calib, _ = load_faces(train[:n_calib], pairs, size)
    eval_source, eval_target = load_faces(val[:n_eval], pairs, size)
    return calib, eval_source, eval_target


def export(checkpoint: Path, output: Path, data_root: str | None = None, n_calib: int = 64, n_eval: int = 30,
           quant: str = "static", fmt: str = "qoperator", formats: tuple[str, ...] = ("onnx",)) -> dict:  # fmt: skip
    state = load_checkpoint(checkpoint)
    model = load_tinybeauty(state, "cpu")
    cfg = state["config"]
    size = int(cfg["data"]["size"])
    phone = [f for f in formats if f in PHONE_FORMATS]
    python = mobile_python() if phone else None  # before any work: a missing environment is said at once
    calib, sources, targets = real_faces(
        checkpoint, data_root or cfg["data"]["root"], size, n_calib, n_eval, int(cfg["seed"])
    )
    report = {"stage": "tinybeauty_export", "checkpoint": str(checkpoint), "image_size": size, "formats": list(formats),
              "faces_calibration": len(calib), "faces_checked": len(sources), "checks": {}}  # fmt: skip
    if "onnx" in formats:
        report.update(onnx_report(model, output, calib, sources, targets, quant, fmt))
    if phone:
        log.info("phone formats %s: converting in %s (deploy/mobile_export.py)", ",".join(phone), python)
        report["phone"] = export_phone(python, checkpoint, output, phone, calib, sources, targets)
        report["checks"].update(report["phone"]["checks"])
    atomic_write_text(output / "export_report.json", json.dumps(report, indent=1))
    log_report(report)
    return report


def onnx_report(model: torch.nn.Module, output: Path, calib: np.ndarray, sources: np.ndarray, targets: np.ndarray,
                quant: str, fmt: str) -> dict:  # fmt: skip
    size = sources.shape[-1]
    fp32_path = export_onnx(model, output / "tinybeauty_fp32.onnx", size)
    int8_path = quantize_int8(fp32_path, output / "tinybeauty_int8.onnx", calib, quant, fmt)
    with torch.no_grad():
        torch_out = model(torch.from_numpy(sources)).numpy()
    fp32_session, int8_session = ort_session(fp32_path), ort_session(int8_path)
    fp32_out, int8_out = ort_run(fp32_session, sources), ort_run(int8_session, sources)
    torch_vs_target = float(psnr(torch.from_numpy(torch_out), torch.from_numpy(targets)).mean())
    identity = float(psnr(torch.from_numpy(sources), torch.from_numpy(targets)).mean())
    report = {
        "quantization": quant,
        "int8_format": fmt if quant == "static" else "dynamic",
        "identity_psnr": identity,
        "pytorch_psnr_vs_target": torch_vs_target,
        "fp32": {"path": str(fp32_path), "size_kb": fp32_path.stat().st_size / 1024,
                 **parity(torch_out, fp32_out, targets)},
        "int8": {"path": str(int8_path), "size_kb": int8_path.stat().st_size / 1024,
                 **parity(torch_out, int8_out, targets)},
    }  # fmt: skip
    report["int8"]["drop_db_vs_pytorch"] = torch_vs_target - report["int8"]["psnr_vs_target"]
    sessions = {"fp32": (fp32_session, fp32_out), "int8": (int8_session, int8_out)}
    report["intensity"] = intensity = intensity_check(model, sources, sessions)
    report["checks"] = {
        "fp32_matches_pytorch": report["fp32"]["max_abs_error"] <= MAX_FP32_ABS_ERROR,
        "int8_within_0.3db": report["int8"]["drop_db_vs_pytorch"] <= MAX_INT8_DROP_DB,
        "int8_under_100kb": report["int8"]["size_kb"] < INT8_LIMIT_KB,
        "intensity_0_gives_source": all(intensity[k]["max_abs_error_at_0_vs_source"] == 0 for k in sessions),
        "intensity_1_is_default": all(intensity[k]["max_abs_error_at_1_vs_default"] == 0 for k in sessions),
        "fp32_intensity_matches_pytorch": intensity["fp32"]["max_abs_error_at_0.5_vs_pytorch"] <= MAX_FP32_ABS_ERROR,
    }
    return report


def intensity_check(model: torch.nn.Module, sources: np.ndarray, sessions: dict) -> dict:
    """Each ONNX at intensity 0 (must give `sources` back exactly), 1 (must equal feeding `source` alone)
    and 0.5 (against PyTorch's blend, as tinybeauty_inference --intensity 0.5)."""
    with torch.no_grad():
        x = torch.from_numpy(sources)
        half = blend(x, model(x), 0.5).numpy()
    result: dict = {"input": INTENSITY, "default": DEFAULT_INTENSITY}
    for kind, (session, default_out) in sessions.items():
        result[kind] = {
            "max_abs_error_at_0_vs_source": float(np.abs(ort_run(session, sources, intensity=0.0) - sources).max()),
            "max_abs_error_at_1_vs_default": float(
                np.abs(ort_run(session, sources, intensity=1.0) - default_out).max()
            ),
            "max_abs_error_at_0.5_vs_pytorch": float(np.abs(ort_run(session, sources, intensity=0.5) - half).max()),
        }
    return result


def log_report(report: dict) -> None:
    if "fp32" in report:
        log_onnx(report)
    if "phone" in report:
        log_phone(report["phone"])
    for name, ok in report["checks"].items():
        (log.info if ok else log.warning)("check %s: %s", name, "ok" if ok else "FAILED")


def log_phone(phone: dict) -> None:
    for precision in ("fp32", "int8"):
        if "tflite" in phone:
            r = phone["tflite"][precision]
            log.info("tflite %s: %s  %.1f KB  PSNR vs PyTorch %.2f dB  vs target %.2f dB (%+.3f dB)  intensity 0: "
                     "%d pixel level(s) off the source at most", precision, r["path"], r["size_kb"],
                     r["psnr_vs_pytorch"], r["psnr_vs_target"], -r["drop_db_vs_pytorch"],
                     r["uint8_levels_at_0_vs_source"]["max"])  # fmt: skip
    if "coreml" in phone:
        r = phone["coreml"]
        log.info("coreml: %s  %.1f KB  ops %s  not on the Neural Engine: %s  (%s)", r["path"], r["size_kb"],
                 ", ".join(sorted(r["ops"])), ", ".join(r["ops_not_on_neural_engine"]) or "none", r["prediction"])  # fmt: skip


def log_onnx(report: dict) -> None:
    log.info("PyTorch vs target: %.2f dB (identity %.2f dB) on %d held-out faces",
             report["pytorch_psnr_vs_target"], report["identity_psnr"], report["faces_checked"])  # fmt: skip
    for kind in ("fp32", "int8"):
        r = report[kind]
        log.info("%s: %s  %.1f KB  max |err| vs PyTorch %.2e  PSNR vs PyTorch %.2f dB  vs target %.2f dB",
                 kind, r["path"], r["size_kb"], r["max_abs_error"], r["psnr_vs_pytorch"], r["psnr_vs_target"])  # fmt: skip
    log.info("int8 loses %.3f dB against the targets compared with PyTorch", report["int8"]["drop_db_vs_pytorch"])
    for kind in ("fp32", "int8"):
        r = report["intensity"][kind]
        log.info("%s input '%s': max |err| at 0 vs source %.2e, at 1 vs source alone %.2e, at 0.5 vs PyTorch %.2e",
                 kind, report["intensity"]["input"], r["max_abs_error_at_0_vs_source"],
                 r["max_abs_error_at_1_vs_default"], r["max_abs_error_at_0.5_vs_pytorch"])  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="tinybeauty_*.pt from tinybeauty_training.py")
    parser.add_argument("--output", required=True, help="folder for the .onnx files and export_report.json")
    parser.add_argument(
        "--data", default=None, help="paired faces for calibration/check (default: the run's data.root)"
    )
    parser.add_argument("--calib", type=int, default=64, help="calibration faces (default: %(default)s)")
    parser.add_argument("--faces", type=int, default=30, help="held-out faces for the check (default: %(default)s)")
    parser.add_argument("--quant", choices=("static", "dynamic"), default="static", help="int8 mode (default: static)")
    parser.add_argument(
        "--format", default="onnx", help=f"files to write, comma-separated: {', '.join(FORMATS)} (default: %(default)s)"
    )
    parser.add_argument("--onnx-int8", choices=("qoperator", "qdq"), default="qoperator",
                        help="the int8 ONNX's layout (default: %(default)s)")  # fmt: skip
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a check fails")
    args = parser.parse_args(argv)
    setup_logging()
    formats = parse_formats(args.format)
    report = export(Path(args.checkpoint), Path(args.output), args.data, args.calib, args.faces, args.quant,
                    args.onnx_int8, formats)  # fmt: skip
    if args.strict and not all(report["checks"].values()):
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

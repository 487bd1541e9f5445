"""Export a trained TinyBeauty to ONNX (fp32 and int8) and check both against PyTorch on real faces.

    python tinybeauty_export.py --checkpoint tinybeauty_model/tinybeauty_best_psnr.pt --output export/
    python tinybeauty_export.py --checkpoint CKPT --output DIR --data ../shared/data/pairs_style1 --quant dynamic

Writes DIR/tinybeauty_fp32.onnx and DIR/tinybeauty_int8.onnx: input `source`, output `makeup`, both
NCHW float32 in [-1, 1] at the training size (dynamic batch), and an optional float32 scalar input
`intensity` (shape [], default 1; 0 to 1.5 as `tinybeauty_inference.py --intensity`): makeup =
clamp(source + intensity x (model(source) - source)), so 0 gives the source back exactly and 1 (or
feeding `source` alone) the model's output. It is a graph input with an initializer of the same
name, ONNX's optional input with a default: ONNX Runtime lists it under
get_overridable_initializers(), not get_inputs(), and logs a warning that it will not constant-fold
it (expected). int8 is onnxruntime's static quantization in QOperator format (QLinearConv),
per-channel weights, calibrated on real training faces; the element-wise tail (`input + residual`,
Clip, the intensity blend) stays float and reads the float `source` (with `--format qdq` too, where
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
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

from common import atomic_write, atomic_write_text, from_uint8, load_checkpoint, log, psnr, run_cli, setup_logging
from data.io import read_rgb, resize_rgb
from data.paired import DatasetError, scan_pairs
from errors import InputError
from models.tinybeauty import load_tinybeauty
from tinybeauty_inference import blend

INT8_LIMIT_KB = 100.0  # the seed's target for the phone model
MAX_INT8_DROP_DB = 0.3
MAX_FP32_ABS_ERROR = 1e-3
INTENSITY, DEFAULT_INTENSITY = "intensity", 1.0  # the ONNX's optional scalar input and its default
ELEMENTWISE = ("Add", "Sub", "Mul", "Clip", "Min", "Max", "Constant")


class WithIntensity(torch.nn.Module):
    """The model with a makeup strength: blend(source, model(source), intensity), as tinybeauty_inference."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, source: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        return blend(source, self.model(source), intensity)


def export_onnx(model: torch.nn.Module, path: Path, size: int, opset: int = 17) -> Path:
    """TorchScript-based exporter (dynamo=False: the dynamo one needs onnxscript, which we do not install).

    Inputs `source` (N, 3, size, size) and the scalar `intensity`, which is also an initializer of
    value 1: ONNX's way of an optional input with a default, so a caller may feed `source` alone.
    """
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, size, size)
    atomic_write(path, lambda tmp: _export(WithIntensity(model), dummy, tmp, opset))
    return path


def _export(model: torch.nn.Module, dummy: torch.Tensor, path: str, opset: int) -> None:
    import onnx
    from onnx import numpy_helper

    torch.onnx.export(
        model,
        (dummy, torch.tensor(DEFAULT_INTENSITY)),
        path,
        input_names=["source", INTENSITY],
        output_names=["makeup"],
        dynamic_axes={"source": {0: "batch"}, "makeup": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    exported = onnx.load(path)
    default = numpy_helper.from_array(np.array(DEFAULT_INTENSITY, np.float32), INTENSITY)
    exported.graph.initializer.append(default)  # a graph input with an initializer: optional, default 1
    onnx.checker.check_model(exported)
    onnx.save(exported, path)


def tail_nodes(onnx_path: Path) -> list[str]:
    """The element-wise ops after the last conv (the model's `input + residual` Add and Clip, and the
    intensity blend): kept in float so int8 does not requantise the face, and intensity 0 gives it back exactly."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    names, todo = [], [producer.get(graph.output[0].name)]
    while todo:
        node = todo.pop()
        if node is None or node.op_type not in ELEMENTWISE or node.name in names:
            continue
        names.append(node.name)
        todo += [producer.get(name) for name in node.input]
    return names


def last_decoder_unit(onnx_path: Path) -> list[str]:
    """The convs of the last conv unit before the head (the finest decoder level's second unit): its output
    is what the head turns into the residual, so its int8 error lands on the face unfiltered."""
    import onnx

    names = [node.name for node in onnx.load(str(onnx_path)).graph.node if node.op_type == "Conv"]
    levels = [int(m.group(1)) for m in (re.match(r"/model/decoders\.(\d+)/", n) for n in names) if m]
    if not levels:
        return []
    prefix = f"/model/decoders.{max(levels)}/decoders.{max(levels)}.1/"
    return [n for n in names if n.startswith(prefix)]


def quantize_int8(
    fp32_path: Path, int8_path: Path, calibration: np.ndarray, mode: str = "static", fmt: str = "qoperator"
) -> Path:
    """int8 weights (and activations for `static`, calibrated on `calibration` (N, 3, S, S) at the 99.99th
    percentile of each activation; the element-wise tail and the last decoder unit stay float).

    `fmt`: qoperator (QLinearConv nodes; pooling, upsampling and concat stay float) or qdq
    (QuantizeLinear/DequantizeLinear pairs around every op, which ORT fuses into int8 kernels).
    """
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # the quantizer warns about optional pre-processing on the root logger
    try:
        return atomic_write(
            int8_path, lambda tmp: compact_names(_quantize(fp32_path, Path(tmp), calibration, mode, fmt))
        )
    finally:
        root_logger.setLevel(level)


def _quantize(fp32_path: Path, int8_path: Path, calibration: np.ndarray, mode: str, fmt: str) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if mode == "dynamic":
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True)
        return int8_path

    class Faces(CalibrationDataReader):
        def __init__(self, images: np.ndarray):
            self.batches = iter([{"source": images[i : i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.batches, None)

    tail = tail_nodes(fp32_path)
    quantize_static(
        str(fp32_path),
        str(int8_path),
        Faces(calibration.astype(np.float32)),
        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
        per_channel=True,  # depthwise kernels differ a lot in range: one scale per channel
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=tail + last_decoder_unit(fp32_path),
        # Activation ranges from the 99.99th percentile instead of MinMax: a few outlier pixels no longer
        # stretch a layer's scale. Measured on the pairs_style1 model of bench/tinybeauty_arch_sweep.py
        # (`chosen`, 30 held-out faces): MinMax -0.149 dB, percentile -0.121 dB, percentile with the last
        # decoder unit in float -0.092 dB (+0.8 KB); with BatchNorm (`chosen_bn`) every variant is within 0.02 dB.
        calibrate_method=CalibrationMethod.Percentile,
        # Biases stay float: int32 biases need per-channel scale arrays next to them, which cost more
        # bytes than they save on a model this small (~8 KB of the 100 KB budget).
        extra_options={"QuantizeBias": False, "CalibPercentile": 99.99},
    )
    return float_inputs_to(int8_path, tail)


def float_inputs_to(path: Path, nodes: list[str]) -> Path:
    """Feed the graph's own inputs to `nodes` again where the quantizer put a Quantize/Dequantize round
    trip in between (QDQ format: every consumer of `source` gets the round trip, excluded nodes too), so
    the float tail sees the exact face; round trips left unused are dropped. Rewrites `path`."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    graph_inputs = {v.name for v in graph.input}

    def original(name: str) -> str:
        dq = producer.get(name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in graph_inputs:
            return q.input[0]
        return name

    changed = False
    for node in graph.node:
        if node.name in nodes:
            inputs = [original(name) for name in node.input]
            changed |= inputs != list(node.input)
            node.input[:] = inputs
    if not changed:
        return path
    while True:  # drop nodes nothing reads any more (the bypassed round trips)
        used = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def compact_names(path: Path) -> Path:
    """Rename internal tensors to short ids and drop node names and value_info (rewrites `path`).

    The exporter's and quantizer's names (`/decoders.0/decoders.0.1/conv/conv.1/Conv_output_0_DequantizeLinear`)
    are about a third of the int8 file; the graph's input and output keep their names.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def ort_session(path: Path, threads: int | None = None):
    """CPU session with every graph optimisation (fusions and the NCHWc layout) and one intra-op
    thread per core unless `threads` says otherwise; this is the configuration the bench times."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1  # a chain of convs: no parallel branches to run
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_run(session, images: np.ndarray, batch: int = 8, intensity: float | None = None) -> np.ndarray:
    """`intensity` None feeds `source` only (the graph's default intensity 1)."""
    extra = {} if intensity is None else {INTENSITY: np.array(intensity, np.float32)}
    outputs = [session.run(None, {"source": images[i : i + batch], **extra})[0] for i in range(0, len(images), batch)]
    return np.concatenate(outputs)


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


def compare(reference: np.ndarray, other: np.ndarray, target: np.ndarray) -> dict:
    ref, oth, tgt = (torch.from_numpy(a) for a in (reference, other, target))
    return {
        "max_abs_error": float((ref - oth).abs().max()),
        "psnr_vs_pytorch": float(psnr(oth, ref).clamp_max(100).mean()),
        "psnr_vs_target": float(psnr(oth, tgt).mean()),
    }


def export(checkpoint: Path, output: Path, data_root: str | None = None, n_calib: int = 64, n_eval: int = 30,
           quant: str = "static", fmt: str = "qoperator") -> dict:  # fmt: skip
    state = load_checkpoint(checkpoint)
    model = load_tinybeauty(state, "cpu")
    cfg = state["config"]
    size = int(cfg["data"]["size"])
    calib, sources, targets = real_faces(
        checkpoint, data_root or cfg["data"]["root"], size, n_calib, n_eval, int(cfg["seed"])
    )

    fp32_path = export_onnx(model, output / "tinybeauty_fp32.onnx", size)
    int8_path = quantize_int8(fp32_path, output / "tinybeauty_int8.onnx", calib, quant, fmt)
    with torch.no_grad():
        torch_out = model(torch.from_numpy(sources)).numpy()
    fp32_session, int8_session = ort_session(fp32_path), ort_session(int8_path)
    fp32_out, int8_out = ort_run(fp32_session, sources), ort_run(int8_session, sources)
    torch_vs_target = float(psnr(torch.from_numpy(torch_out), torch.from_numpy(targets)).mean())
    identity = float(psnr(torch.from_numpy(sources), torch.from_numpy(targets)).mean())
    report = {
        "stage": "tinybeauty_export",
        "checkpoint": str(checkpoint),
        "image_size": size,
        "quantization": quant,
        "int8_format": fmt if quant == "static" else "dynamic",
        "faces_calibration": len(calib),
        "faces_checked": len(sources),
        "identity_psnr": identity,
        "pytorch_psnr_vs_target": torch_vs_target,
        "fp32": {"path": str(fp32_path), "size_kb": fp32_path.stat().st_size / 1024,
                 **compare(torch_out, fp32_out, targets)},
        "int8": {"path": str(int8_path), "size_kb": int8_path.stat().st_size / 1024,
                 **compare(torch_out, int8_out, targets)},
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
    atomic_write_text(output / "export_report.json", json.dumps(report, indent=1))
    log_report(report)
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
    for name, ok in report["checks"].items():
        (log.info if ok else log.warning)("check %s: %s", name, "ok" if ok else "FAILED")


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
        "--format", choices=("qoperator", "qdq"), default="qoperator", help="static int8 format (default: %(default)s)"
    )
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a check fails")
    args = parser.parse_args(argv)
    setup_logging()
    report = export(
        Path(args.checkpoint), Path(args.output), args.data, args.calib, args.faces, args.quant, args.format
    )
    if args.strict and not all(report["checks"].values()):
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

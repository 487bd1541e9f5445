"""TinyBeauty as ONNX: export (fp32, with an optional `intensity` input), int8 quantisation, ONNX Runtime sessions.

The exported graph takes `source` (N, 3, S, S) float32 in [-1, 1] and an optional float32 scalar
`intensity` (default 1), and returns `makeup`: clamp(source + intensity x (model(source) - source)).
`intensity` is a graph input with an initializer of the same name (ONNX's optional input with a
default), so ONNX Runtime lists it under get_overridable_initializers(). `tinybeauty_export.py` is the
command that writes and checks both files; the benches, the video runtime and web/ use these helpers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from common import atomic_write, log
from deploy.makeup import blend

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
    # The wrapper in eval mode too: the exporter puts the module it is given back in that module's own mode, and
    # a new wrapper is in training mode, which would leave the caller's model with BatchNorm on batch statistics.
    atomic_write(path, lambda tmp: _export(WithIntensity(model).eval(), dummy, tmp, opset))
    return path


def _export(model: torch.nn.Module, dummy: torch.Tensor, path: str, opset: int) -> None:
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
    import onnxruntime as ort  # heavy: loaded only to quantise

    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # the quantizer warns about optional pre-processing on the root logger
    # Its calibration sessions are its own (no options of ours): errors only, for the `intensity` warning
    # (ort_session); and it print()s its progress ("Number of histogram bins", "Percentile"): to the debug log.
    ort.set_default_logger_severity(3)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            return atomic_write(
                int8_path, lambda tmp: compact_names(_quantize(fp32_path, Path(tmp), calibration, mode, fmt))
            )
    finally:
        ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings
        root_logger.setLevel(level)
        for line in printed.getvalue().splitlines():
            log.debug("onnxruntime.quantization: %s", line)


def _quantize(fp32_path: Path, int8_path: Path, calibration: np.ndarray, mode: str, fmt: str) -> Path:
    from onnxruntime.quantization import (  # onnxruntime: heavy, loaded only to quantise
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


def without_intensity(model: onnx.ModelProto) -> onnx.ModelProto:
    """The export with its output taken before the intensity blend: the model's own clamp(source + residual),
    no `intensity` input, and none of the blend's four full-size element-wise ops, which ONNX Runtime cannot
    fold away while `intensity` is an input. For a caller that blends itself (the web page: onnxruntime-web
    1.30 takes no feed for `intensity` anyway); its output is the full export's at intensity 1, bit for bit.
    A graph without the blend (Mul by `intensity`) comes back as it is. Changes `model` in place and returns it.
    """
    graph = model.graph
    scaled = [node for node in graph.node if node.op_type == "Mul" and INTENSITY in node.input]
    if len(scaled) != 1 or len(graph.output) != 1:
        return model
    own_output = next(name for name in scaled[0].input if name != INTENSITY)
    output = graph.output[0].name
    graph.node.remove(next(node for node in graph.node if output in node.output))  # the blend's last op
    for node in graph.node:
        node.input[:] = [output if name == own_output else name for name in node.input]
        node.output[:] = [output if name == own_output else name for name in node.output]
    while True:  # drop the rest of the blend: nodes nothing reads any more
        used = {name for node in graph.node for name in node.input} | {output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    for values in (graph.input, graph.initializer):
        for value in [v for v in values if v.name == INTENSITY]:
            values.remove(value)
    onnx.checker.check_model(model)
    return model


def ort_session(path: Path, threads: int | None = None):
    """CPU session with every graph optimisation (fusions and the NCHWc layout) and one intra-op
    thread per core unless `threads` says otherwise; this is the configuration the bench times."""
    import onnxruntime as ort  # heavy: loaded when a session is made, not on import

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1  # a chain of convs: no parallel branches to run
    # Errors only (3): its warning that the `intensity` initializer is also a graph input is the design (export_onnx:
    # a default of 1 the caller may override), not news; a real failure still raises.
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_run(session, images: np.ndarray, batch: int = 8, intensity: float | None = None) -> np.ndarray:
    """`intensity` None feeds `source` only (the graph's default intensity 1)."""
    extra = {} if intensity is None else {INTENSITY: np.array(intensity, np.float32)}
    outputs = [session.run(None, {"source": images[i : i + batch], **extra})[0] for i in range(0, len(images), batch)]
    return np.concatenate(outputs)

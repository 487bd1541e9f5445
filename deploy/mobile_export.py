"""Phone models of a trained TinyBeauty: LiteRT for Android (fp32, full-integer int8) and Core ML for iOS (fp16).

    .venv-mobile/bin/python -m deploy.mobile_export --checkpoint CKPT --faces FACES.npz --out DIR --formats tflite,coreml

`tinybeauty_export.py --format onnx,tflite,coreml` runs this module in the phone environment that
`scripts/setup_mobile.sh` makes (.venv-mobile: litert-torch, ai-edge-quantizer and coremltools pull numpy 2 and
protobuf 7, which break mediapipe's pins in .venv; why: docs/decisions.md#mobile-environment). FACES.npz holds
`calibration`, `sources` and `targets`, (N, 3, S, S) float32 in [-1, 1], as tinybeauty_export.py picks them.

Both models are deploy.phone_model's rewrite of the checkpoint (the same function in layers phones run natively):
- DIR/tinybeauty_fp32.tflite and DIR/tinybeauty_int8.tflite, converted by litert-torch, with one signature
  `serving_default`: inputs `source` (1, S, S, 3), channels last, in [-1, 1] and `intensity` (1,), output
  `makeup` (1, S, S, 3) = clamp(source + intensity x (model(source) - source)). TFLite has no optional inputs:
  feed intensity 1 for the model's makeup. int8 is ai-edge-quantizer's static int8 (weights and activations,
  inputs and output int8 too: full-integer, for NPUs and the GPU delegate's quantized path), calibrated on the
  style's own training faces at intensities 0, 0.5, 1 and 1.5 (the quantizer keeps a moving average of each
  tensor's range, so one pass at mixed intensities would clip the intensity input to its average; each
  intensity gets its own pass and the ranges are merged). Weights per tensor, not per channel: LiteRT stores
  a float scale and an int64 zero point for every channel, 47 KB for this model, which puts the file over
  100 KB; per tensor costs no measurable PSNR here (docs/decisions.md#mobile-int8-weights). Tensor names are
  shortened to t0, t1, ... (litert-torch writes the module path of each, 44 KB of the file).
- DIR/tinybeauty.mlpackage: a Core ML ML program (compute precision fp16, iOS 16+) converted by coremltools.
  Input `source`: an RGB image (S x S, CVPixelBuffer in Swift), scaled to [-1, 1] inside the model;
  optional input `intensity` (1,), default 1; output `makeup`: an RGB image. Linux cannot run Core ML
  predictions (they need macOS or iOS): this module checks what can be checked without them (the spec loads,
  its inputs and outputs, every op one the Neural Engine runs, fp16 weights).

DIR/mobile_report.json has each file's size, its parity with PyTorch on the held-out faces (PSNR between
outputs, PSNR against the targets and the drop from PyTorch's), the intensity checks and the Core ML checks.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import atomic_write, atomic_write_dir, atomic_write_text, load_checkpoint, psnr
from deploy.makeup import blend, parity
from deploy.mobile_env import PHONE_FORMATS
from deploy.phone_model import UnitMakeup, phone_model
from models.tinybeauty import load_tinybeauty

TFLITE_FILES = {"fp32": "tinybeauty_fp32.tflite", "int8": "tinybeauty_int8.tflite"}
COREML_FILE = "tinybeauty.mlpackage"
SIGNATURE = "serving_default"
CALIBRATION_INTENSITIES = (0.0, 0.5, 1.0, 1.5)
# Ops of a Core ML ML program that the Neural Engine runs (Apple's coremltools docs and the ANE's published op
# support; no custom layers, no norm layers left after the converter folds BatchNorm into the convs).
NEURAL_ENGINE_OPS = frozenset({"const", "cast", "conv", "relu", "max_pool", "pixel_shuffle", "concat", "add",
                               "mul", "sub", "clip", "transpose", "reshape", "real_div"})  # fmt: skip
MAX_FP32_DROP_DB, MAX_INT8_DROP_DB, INT8_LIMIT_KB = 0.1, 0.3, 100.0


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


# --- LiteRT ---------------------------------------------------------------------------------------------------


def short_names(buffer: bytes) -> bytes:
    """The .tflite with every tensor but the inputs and outputs renamed t0, t1, ... (a third of a small file)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buffer, 0))
    for graph in model.subgraphs:
        keep = set(graph.inputs) | set(graph.outputs)
        for index, tensor in enumerate(graph.tensors):
            if index not in keep:
                tensor.name = f"t{index}".encode()
    builder = flatbuffers.Builder(len(buffer))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def quiet():
    """Swallow the converters' progress lines on stdout (they would bury this module's report)."""
    return contextlib.redirect_stdout(io.StringIO())


def litert_model(module: torch.nn.Module, size: int, path: Path) -> Path:
    """`module` (PhoneMakeup) converted by litert-torch, tensor names shortened, written to `path`."""
    import litert_torch

    sample = {"source": torch.zeros(1, size, size, 3), "intensity": torch.ones(1)}
    with quiet():
        edge = litert_torch.convert(NamedOutput(module).eval(), sample_kwargs=sample)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.tflite"
        with quiet():
            edge.export(str(raw))
        atomic_write(path, lambda t: Path(t).write_bytes(short_names(raw.read_bytes())))
    return path


def convert_tflite(model: torch.nn.Module, size: int, out: Path, calibration: np.ndarray, threads: int = 1) -> dict:
    """Write DIR/tinybeauty_fp32.tflite and tinybeauty_int8.tflite; {precision: path}."""
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager

    fp32 = litert_model(phone_model(model), size, out / TFLITE_FILES["fp32"])
    recipes = recipe_manager.RecipeManager()
    recipes.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                              activation_num_bits=8, weight_num_bits=8,
                              weight_granularity=qtyping.QuantGranularity.TENSORWISE)  # fmt: skip
    int8 = out / TFLITE_FILES["int8"]
    with tempfile.TemporaryDirectory() as tmp:
        unclamped = litert_model(phone_model(model, clamp=False), size, Path(tmp) / "unclamped.tflite")
        quant = quantizer.Quantizer(str(unclamped))
        quant.load_quantization_recipe(recipes.get_quantization_recipe())
        ranges: dict = {}
        faces = nhwc((calibration + 1) * 0.5)  # pixels / 255, the phone model's input
        for level in CALIBRATION_INTENSITIES:  # each intensity, each face on its own: see the module docstring
            for face in faces:
                feed = {"source": face[None], "intensity": np.array([level], np.float32)}
                with quiet(), contextlib.redirect_stderr(io.StringIO()):
                    ranges = merge_ranges(ranges, quant.calibrate({SIGNATURE: [feed]}, num_threads=threads))
        ranges = unit_io_ranges(ranges, unclamped)
        with quiet():
            result = quant.quantize(ranges)
    atomic_write(int8, lambda t: Path(t).write_bytes(short_names(bytes(result.quantized_model))))
    return {"fp32": fp32, "int8": int8}


def unit_io_ranges(ranges: dict, path: Path) -> dict:
    """The image input's range, and the output's with the layout ops and the final ADD that make it, set to
    exactly [0, 1]: int8 scale 1/255, zero point -128, one level a pixel value, whatever the calibration faces'
    darkest and brightest pixels were. The output's [0, 1] is also the clamp (int8 saturates there)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
    graph = model.subgraphs[0]
    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    producer = {t: op for op in graph.operators for t in op.outputs}
    pinned = [graph.tensors[graph.inputs[i]].name.decode() for i in range(len(graph.inputs))
              if list(graph.tensors[graph.inputs[i]].shape)[-1] == 3]  # fmt: skip
    tensor = graph.outputs[0]
    while tensor in producer:  # back from the output through the layout ops to the ADD that makes the image
        pinned.append(graph.tensors[tensor].name.decode())
        op = producer[tensor]
        code = model.operatorCodes[op.opcodeIndex]
        kind = codes[max(code.builtinCode, code.deprecatedBuiltinCode)]
        if kind not in ("TRANSPOSE", "RESHAPE"):
            break
        tensor = op.inputs[0]
    out = dict(ranges)
    for name in pinned:
        if name not in out:
            raise KeyError(f"no calibration range for {name} (have {len(out)} tensors)")
        out[name] = {**out[name], "min": np.zeros_like(out[name]["min"]), "max": np.ones_like(out[name]["max"])}
    return out


class NamedOutput(torch.nn.Module):
    """Returns {"makeup": ...}, so the LiteRT signature names its output `makeup` (inputs take the kwargs' names)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, source: torch.Tensor, intensity: torch.Tensor) -> dict:
        return {"makeup": self.model(source, intensity)}


def merge_ranges(merged: dict, new: dict) -> dict:
    """Calibration results {tensor: {"min", "max", ...}} united: the smaller min and the larger max."""
    out = dict(merged)
    for name, qsv in new.items():
        if name in out and out[name] and qsv:
            out[name] = {**out[name], "min": np.minimum(out[name]["min"], qsv["min"]),
                         "max": np.maximum(out[name]["max"], qsv["max"])}  # fmt: skip
        elif qsv:
            out[name] = qsv
    return out


class TFLiteRunner:
    """A .tflite's `serving_default` on (N, 3, S, S) float32 faces in [-1, 1], one face at a time (batch 1), with
    the int8 model's input quantisation and output dequantisation done here as an app would do them."""

    def __init__(self, path: Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(str(path), num_threads=threads)
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        self.inputs, self.outputs = self.runner.get_input_details(), self.runner.get_output_details()

    def __call__(self, faces: np.ndarray, intensity: float = 1.0) -> np.ndarray:
        level = np.array([intensity], np.float32)
        outs = []
        for face in nhwc((faces + 1) * 0.5):  # the phone model's pixels / 255
            feeds = {"source": quantize(face[None], self.inputs["source"]),
                     "intensity": quantize(level, self.inputs["intensity"])}  # fmt: skip
            outs.append(dequantize(self.runner(**feeds)["makeup"], self.outputs["makeup"]))
        return np.concatenate(outs).transpose(0, 3, 1, 2) * 2 - 1  # back to (N, 3, S, S) in [-1, 1]


def quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


def dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def check_tflite(paths: dict, model: torch.nn.Module, sources: np.ndarray, targets: np.ndarray) -> dict:
    with torch.no_grad():
        x = torch.from_numpy(sources)
        reference = {level: blend(x, model(x), level).numpy() for level in (1.0, 0.5)}
    torch_vs_target = float(psnr(torch.from_numpy(reference[1.0]), torch.from_numpy(targets)).mean())
    report: dict = {"pytorch_psnr_vs_target": torch_vs_target}
    for precision, path in paths.items():
        run = TFLiteRunner(path)
        out, half, zero = run(sources, 1.0), run(sources, 0.5), run(sources, 0.0)
        at_half = parity(reference[0.5], half, targets)
        zero_levels = np.abs(np.rint((zero + 1) * 127.5) - np.rint((sources + 1) * 127.5))
        report[precision] = {
            "path": str(path),
            "size_kb": path.stat().st_size / 1024,
            "input_dtype": run.inputs["source"]["dtype"].__name__,
            # int8: (scale, zero point) of the image in and out; (1/255, -128) is `pixel - 128` both ways
            "source_quantization": [float(v) for v in run.inputs["source"]["quantization"]],
            "makeup_quantization": [float(v) for v in run.outputs["makeup"]["quantization"]],
            **parity(reference[1.0], out, targets),
            "max_abs_error_at_0.5_vs_pytorch": at_half["max_abs_error"],
            "psnr_at_0.5_vs_pytorch": at_half["psnr_vs_pytorch"],
            "max_abs_error_at_0_vs_source": float(np.abs(zero - sources).max()),
            "uint8_levels_at_0_vs_source": {
                "max": int(zero_levels.max()),
                "share_equal": float((zero_levels == 0).mean()),
            },  # fmt: skip
        }
        report[precision]["drop_db_vs_pytorch"] = torch_vs_target - report[precision]["psnr_vs_target"]
    return report


# --- Core ML --------------------------------------------------------------------------------------------------


class ImageMakeup(UnitMakeup):
    """(1, 3, S, S) RGB in [0, 1] (Core ML scales the image input by 1/255) and (1,) intensity -> RGB in 0-255
    (Core ML's image output takes pixel values)."""

    def forward(self, image: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        return super().forward(image, intensity) * 255.0


def convert_coreml(model: torch.nn.Module, size: int, out: Path) -> Path:
    import coremltools as ct

    wrapper = ImageMakeup(model).eval()
    example = (torch.rand(1, 3, size, size), torch.ones(1))
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, example)
    inputs = [ct.ImageType(name="source", shape=(1, 3, size, size), scale=1 / 255, color_layout=ct.colorlayout.RGB),
              ct.TensorType(name="intensity", shape=(1,), dtype=np.float32,
                            default_value=np.array([1.0], np.float32))]  # fmt: skip
    with quiet():
        mlmodel = ct.convert(traced, inputs=inputs, outputs=[ct.ImageType(name="makeup", color_layout=ct.colorlayout.RGB)],
                             convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
                             minimum_deployment_target=ct.target.iOS16)  # fmt: skip
    mlmodel.short_description = "TinyBeauty makeup: RGB face in, RGB face with makeup out (intensity 0-1.5, default 1)"
    return atomic_write_dir(out / COREML_FILE, lambda staged: mlmodel.save(str(staged)))


def check_coreml(path: Path, size: int) -> dict:
    """What Linux can check of an .mlpackage: the spec loads, its interface, its ops, its weights' precision."""
    import coremltools as ct
    from coremltools.proto import FeatureTypes_pb2, MIL_pb2

    spec = ct.utils.load_spec(str(path))
    ops: dict[str, int] = {}
    weight_types: dict[str, int] = {}
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops[op.type] = ops.get(op.type, 0) + 1
                if op.type == "const" and "val" in op.attributes:
                    value = op.attributes["val"]
                    if value.type.tensorType.dimensions:  # tensors, not scalars
                        name = MIL_pb2.DataType.Name(value.type.tensorType.dataType)
                        weight_types[name] = weight_types.get(name, 0) + 1

    def describe(feature) -> dict:
        kind = feature.type.WhichOneof("Type")
        entry: dict = {"name": feature.name, "type": kind, "optional": feature.type.isOptional}
        if kind == "imageType":
            entry.update(width=feature.type.imageType.width, height=feature.type.imageType.height,
                         color=FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(feature.type.imageType.colorSpace))  # fmt: skip
        elif kind == "multiArrayType":
            entry.update(shape=list(feature.type.multiArrayType.shape),
                         default=feature.type.multiArrayType.floatDefaultValue)  # fmt: skip
        return entry

    inputs = [describe(f) for f in spec.description.input]
    outputs = [describe(f) for f in spec.description.output]
    not_on_ane = sorted(set(ops) - NEURAL_ENGINE_OPS)
    expected_image = {"type": "imageType", "width": size, "height": size, "color": "RGB"}
    size_kb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024
    return {
        "path": str(path),
        "size_kb": size_kb,
        "spec_version": spec.specificationVersion,
        "model_type": spec.WhichOneof("Type"),
        "inputs": inputs,
        "outputs": outputs,
        "ops": ops,
        "ops_not_on_neural_engine": not_on_ane,
        "weight_dtypes": weight_types,
        "checks": {
            "is_ml_program": spec.WhichOneof("Type") == "mlProgram",
            "source_is_rgb_image": any(i["name"] == "source" and expected_image.items() <= i.items() for i in inputs),
            "intensity_is_optional_default_1": any(
                i["name"] == "intensity" and i["optional"] and i.get("default") == 1.0 for i in inputs
            ),  # fmt: skip
            "makeup_is_rgb_image": any(o["name"] == "makeup" and o["type"] == "imageType" for o in outputs),
            "ops_run_on_neural_engine": not not_on_ane,
            "weights_fp16": set(weight_types) <= {"FLOAT16", "INT32"} and "FLOAT16" in weight_types,
        },
        "prediction": "not run: Core ML predictions need macOS or iOS",
    }


# --- the command ----------------------------------------------------------------------------------------------


def export_phone(checkpoint: Path, faces: Path, out: Path, formats: list[str]) -> dict:
    state = load_checkpoint(checkpoint)
    model = load_tinybeauty(state, "cpu").eval()
    size = int(state["config"]["data"]["size"])
    data = np.load(faces)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"checkpoint": str(checkpoint), "image_size": size, "faces_checked": len(data["sources"]),
                    "faces_calibration": len(data["calibration"])}  # fmt: skip
    if "tflite" in formats:
        started = time.perf_counter()
        paths = convert_tflite(model, size, out, data["calibration"])
        report["tflite"] = check_tflite(paths, model, data["sources"], data["targets"])
        report["tflite"]["seconds"] = time.perf_counter() - started
        report["tflite"]["calibration_intensities"] = list(CALIBRATION_INTENSITIES)
    if "coreml" in formats:
        started = time.perf_counter()
        report["coreml"] = check_coreml(convert_coreml(model, size, out), size)
        report["coreml"]["seconds"] = time.perf_counter() - started
    report["checks"] = checks(report)
    atomic_write_text(out / "mobile_report.json", json.dumps(report, indent=1))
    return report


def checks(report: dict) -> dict:
    result = {}
    if "tflite" in report:
        lite = report["tflite"]
        result.update({
            "tflite_fp32_within_0.1db": lite["fp32"]["drop_db_vs_pytorch"] <= MAX_FP32_DROP_DB,
            "tflite_fp32_intensity_0_gives_source": lite["fp32"]["max_abs_error_at_0_vs_source"] == 0,
            "tflite_int8_within_0.3db": lite["int8"]["drop_db_vs_pytorch"] <= MAX_INT8_DROP_DB,
            "tflite_int8_under_100kb": lite["int8"]["size_kb"] < INT8_LIMIT_KB,
        })  # fmt: skip
    if "coreml" in report:
        result.update({f"coreml_{name}": ok for name, ok in report["coreml"]["checks"].items()})
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--faces", required=True, type=Path, help="calibration, sources, targets (.npz)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--formats", default=",".join(PHONE_FORMATS), help="tflite, coreml or both, comma-separated")
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    unknown = sorted(set(formats) - set(PHONE_FORMATS))
    if unknown:
        raise SystemExit(f"error: unknown phone format {', '.join(unknown)}; valid: {', '.join(PHONE_FORMATS)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    report = export_phone(args.checkpoint, args.faces, args.out, formats)
    print(json.dumps(report["checks"]))
    return report


if __name__ == "__main__":
    main()

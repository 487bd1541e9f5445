"""Phone model latency on this CPU: the LiteRT interpreter (its CPU delegate, XNNPACK) beside ONNX Runtime.

    .venv-mobile/bin/python bench/mobile_bench.py --models export/            # a tinybeauty_export.py --format onnx,tflite folder
    .venv-mobile/bin/python bench/mobile_bench.py --models export/ --threads 1,2 --runs 50

Runs in the phone environment (scripts/setup_mobile.sh), which has both runtimes. Each model is timed at batch 1
on one face-sized input (uint8 pixels as a camera gives them, converted as each model wants: [-1, 1] float for the
ONNX files, pixels / 255 for the fp32 .tflite, `pixel - 128` int8 for the int8 .tflite), median of `--runs` timed
runs after 5 warm-up runs, for each thread count. This is a desktop CPU, not a phone: the figures rank the files
and the runtimes against each other; on a phone the same interpreter and delegate run on ARM cores. The last line
printed is the JSON, with the machine and its load average (a shared machine makes every number slower).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from statistics import median

import numpy as np


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_runs(run, runs: int) -> float:
    for _ in range(5):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return median(times) * 1000


def litert_runner(path: Path, threads: int, pixels: np.ndarray):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(str(path), num_threads=threads).get_signature_runner("serving_default")
    source = runner.get_input_details()["source"]
    if source["dtype"] == np.int8:
        feed = {"source": (pixels.astype(np.int16) - 128).astype(np.int8)[None],
                "intensity": np.array([int(round(1 / runner.get_input_details()["intensity"]["quantization"][0])) - 128],
                                      np.int8)}  # fmt: skip
    else:
        feed = {"source": (pixels.astype(np.float32) / 255)[None], "intensity": np.ones(1, np.float32)}
    return lambda: runner(**feed)


def ort_runner(path: Path, threads: int, pixels: np.ndarray):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # the `intensity` initializer warning: expected (deploy/onnx_export.py)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    source = (pixels.astype(np.float32) / 127.5 - 1).transpose(2, 0, 1)[None]
    return lambda: session.run(None, {"source": source})


def model_size(path: Path) -> int:
    """The side of the face the model takes (its input's fixed spatial size)."""
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(str(path)).get_signature_runner("serving_default")
        return int(runner.get_input_details()["source"]["shape"][1])  # (1, S, S, 3)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return int(ort.InferenceSession(str(path), options).get_inputs()[0].shape[2])  # (N, 3, S, S)


RUNNERS = {".tflite": ("litert", litert_runner), ".onnx": ("onnxruntime", ort_runner)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--models", required=True, type=Path, help="folder with tinybeauty_*.onnx / *.tflite")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    files = sorted(p for p in args.models.iterdir() if p.suffix in RUNNERS and p.name.startswith("tinybeauty_"))
    if not files:
        raise SystemExit(f"error: no tinybeauty_*.onnx or *.tflite in {args.models}")
    rng = np.random.default_rng(0)
    results = []
    for path in files:
        runtime, make = RUNNERS[path.suffix]
        size = model_size(path)
        for threads in (int(t) for t in args.threads.split(",")):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            ms = time_runs(make(path, threads, pixels), args.runs)
            results.append({"file": path.name, "runtime": runtime, "threads": threads, "batch1_ms": round(ms, 2),
                            "size_kb": round(path.stat().st_size / 1024, 1)})  # fmt: skip
            print(f"{path.name:28s} {runtime:12s} {threads} thread(s): {ms:7.2f} ms")
    report = {"bench": "mobile_bench", "models": str(args.models), "runs": args.runs, "results": results,
              "machine": {"cpu": cpu_name(), "cores_used": len(os.sched_getaffinity(0)),
                          "load_average": os.getloadavg()}}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()

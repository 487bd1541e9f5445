"""The web page's speed in headless Chromium (onnxruntime-web, WASM), and its face framing against photo mode.

    python bench/web_bench.py
    python bench/web_bench.py --model export/tinybeauty_int8.onnx --model export/tinybeauty_fp32.onnx

Serves web/ with web/serve.py and drives the system's Chromium (web/page_driver.py). For each model
and WASM thread count: the page's own per-frame times on a sample face photo (350x350; the median of
`--frames` frames, each one as the webcam runs it: detection, crop, model, paste-back) and on
Chromium's fake camera playing that face at 640x480 (getUserMedia, the page's webcam loop). ONNX
Runtime in Python on the same file at the same thread count is timed beside it, on the same loaded
machine. Without --model an untrained TinyBeauty (the default config's layers: the same speed as a
trained one) is exported to fp32 and int8 as tests/test_web.py does. Also: how the page's face
framing (MediaPipe Tasks' short-range detector) compares with data/face_align.py's on the 16 sample
faces. Writes bench/results/web_bench.json and a screenshot, bench/results/web_page.png (the first
model, photo at intensity 1); the last line printed is the JSON, with the load average, because the
2 cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from statistics import median
from urllib.request import urlopen

import numpy as np

from common import atomic_write_text
from data.face_align import FaceAligner
from deploy.onnx_export import ort_session
from web import page_driver

REPO = Path(__file__).resolve().parents[1]
FACES = REPO / "data/samples/faces"
PHOTO = FACES / "AF1.jpg"


def page_timings(browser, url: str, model: str, threads: int, frames: int, screenshot: Path | None) -> dict:
    page = page_driver.open_page(browser, url, f"?model={model}&threads={threads}")
    page_driver.upload(page, PHOTO)
    photo = page.evaluate("n => tinybeauty.benchmark(n)", frames)
    if screenshot is not None:  # showing the last timed frame's times
        page.screenshot(path=str(screenshot), full_page=True)
    page.click("#webcam")
    page.wait_for_function("() => tinybeauty.state.error || tinybeauty.state.last.source === 'webcam'")
    first, start = page_driver.check(page)["runs"], time.perf_counter()
    page.wait_for_function(f"() => tinybeauty.state.error || tinybeauty.state.webcamMs.length >= {frames}")
    state = page_driver.check(page)
    seconds = time.perf_counter() - start
    page.click("#webcam")
    page.close()
    return {
        "photo_350": {key.removesuffix("Ms") + "_ms": round(value, 1) for key, value in photo.items()},
        "webcam_640x480": {
            "frame_ms": round(median(state["webcamMs"]), 1),
            "fps": round((state["runs"] - first) / seconds, 1),
            "faces": len(state["last"]["faces"]),
        },
    }


def python_ort_ms(path: Path, threads: int, runs: int = 30) -> float:
    session = ort_session(path, threads)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 256, 256)).astype(np.float32)
    times = []
    for i in range(runs + 3):
        start = time.perf_counter()
        session.run(None, {"source": x})
        if i >= 3:  # warm-up
            times.append((time.perf_counter() - start) * 1000)
    return round(median(times), 2)


def framing(browser, url: str, model: str) -> dict:
    """The page's crop box and eye angle against data/face_align.py's, per sample face (in box sides)."""
    page = page_driver.open_page(browser, url, f"?model={model}")
    rows = []
    with FaceAligner(size=256) as aligner:
        for photo in sorted(FACES.glob("*.jpg")):
            face = page_driver.upload(page, photo)["faces"][0]
            reference = aligner.detect(page_driver.read_canvas(page, "before"))[0]
            box, ref = np.array(face["box"]), np.array(reference.box, float)
            side = ref[2] - ref[0]
            rows.append([
                np.abs((box[:2] + box[2:]) / 2 - (ref[:2] + ref[2:]) / 2).max() / side,
                abs((box[2] - box[0]) / side - 1),
                abs(face["angle"] - reference.angle),
            ])  # fmt: skip
    page.close()
    rows = np.array(rows)
    names = ("centre_offset", "side_error", "angle_error_deg")
    return {"faces": len(rows), **{f"{n}_{stat}": round(float(f(rows[:, i])), 3)
            for i, n in enumerate(names) for stat, f in (("median", np.median), ("max", np.max))}}  # fmt: skip


def stand_in(folder: Path) -> list[Path]:
    int8 = page_driver.stand_in_model(folder)
    return [int8, folder / "tinybeauty_fp32.onnx"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="exported ONNX (repeatable; default: stand-in)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="WASM thread counts to time")
    parser.add_argument("--frames", type=int, default=30, help="frames per median (default: %(default)s)")
    parser.add_argument("--output", default=str(REPO / "bench/results/web_bench.json"), help="JSON result")
    parser.add_argument("--screenshot", default=str(REPO / "bench/results/web_page.png"), help="page screenshot")
    args = parser.parse_args(argv)
    reason = page_driver.missing()
    if reason:
        raise SystemExit(f"error: cannot run the browser: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        models = [Path(m).resolve() for m in args.model] or stand_in(Path(tmp))
        result = {
            "models": [str(m) if args.model else f"stand-in (untrained TinyBeauty) {m.name}" for m in models],
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
            "onnxruntime_web": json.loads((page_driver.WEB / "package.json").read_text())["dependencies"],
        }
        webcam = page_driver.fake_webcam_video(PHOTO, Path(tmp) / "webcam.y4m")
        with page_driver.serve(models, Path(tmp) / "serve.log") as url, page_driver.chromium(webcam) as browser:
            result["chromium"] = browser.version
            with urlopen(f"{url}models.json") as response:  # the --model files first, in order
                served = [m["url"] for m in json.load(response)]
            for index, path in enumerate(models):
                for threads in args.threads:
                    shot = Path(args.screenshot) if index == 0 and threads == max(args.threads) else None
                    timings = page_timings(browser, url, served[index], threads, args.frames, shot)
                    timings["python_onnxruntime_ms"] = python_ort_ms(path, threads)
                    result[f"{path.name}, {threads} thread{'s' * (threads > 1)}"] = timings
                    print(json.dumps({path.name: {threads: timings}}), flush=True)
            result["framing_vs_photo_mode"] = framing(browser, url, served[0])
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    atomic_write_text(Path(args.output), json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

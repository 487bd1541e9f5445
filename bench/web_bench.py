"""The web page's speed in headless Chromium (onnxruntime-web), beside ONNX Runtime in Python, and its face framing.

    python bench/web_bench.py                                   # stand-in fp32 + int8, 1 and 2 WASM threads
    python bench/web_bench.py --style smoky_eye                 # a shipped style's two exports
    python bench/web_bench.py --model export/tinybeauty_fp32.onnx --threads 1
    python bench/web_bench.py --compare-web /tmp/old/web        # this page against another copy of web/
    python bench/web_bench.py --webgpu-software                 # also WebGPU forced onto SwiftShader (a CPU)

Serves web/ with web/serve.py and drives the system's Chromium (web/page_driver.py). For each model and
WASM thread count a page is opened (threads are fixed when a page starts), and then the pages are timed in
turns, `--rounds` times (a round: every page, in reverse order every other round, then ONNX Runtime in
Python on every model at every thread count), so that all of them meet the same load on the shared cores; each figure is the median over all
rounds. A page is timed on a sample face photo (350x350; `--frames` frames a round, each one as the webcam
runs it: detection, crop, model, paste-back, with each part's own time) and on Chromium's fake camera
playing that face at 640x480 (getUserMedia, the page's webcam loop: the median frame time and the frames
a second). Without --model or --style an untrained TinyBeauty with configs/tinybeauty.yaml's layers (the
same speed as a trained one) is exported to fp32 and int8 as tests/test_web.py does. SIMD is always on
(onnxruntime-web 1.30 ships only the SIMD build); WebGPU is used where Chromium has a GPU adapter (the
JSON says whether it had one; `--webgpu-software` also times the fp32 model forced onto WebGPU in a Chromium
with SwiftShader, the software adapter the page's auto mode leaves out). `--compare-web DIR` also serves DIR (another copy of web/, with its own
serve.py, node_modules/ and models/ linked in) and times its page in the same turns: a before/after of
the page's code on the same model. Also: how the page's face framing (MediaPipe Tasks' short-range
detector) compares with data/face_align.py's on the 16 sample faces. Writes bench/results/web_bench.json
and a screenshot, bench/results/web_page.png (the first model's page after its first round); the last
line printed is the JSON, with the load average, because the 2 cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from statistics import median
from urllib.request import urlopen

import numpy as np

from common import atomic_write_text
from data.face_align import FaceAligner
from deploy.onnx_export import ort_session
from deploy.styles import get_style
from web import page_driver

REPO = Path(__file__).resolve().parents[1]
FACES = REPO / "data/samples/faces"
PHOTO = FACES / "AF1.jpg"
GOAL_MS = 40.0  # issue 24: the page's own time per webcam frame, fp32 export, headless Chromium, 2 cores


def key_of(model: Path, threads: int, page: str = "") -> str:
    return f"{page}{model.name}, {threads} thread{'s' * (threads > 1)}"


def serve_other(web: Path, models: list[Path], log: Path):
    """Another copy of web/ served by its own serve.py (whatever options it knows: --model only)."""
    return page_driver.serve_folder(web, [f"--model={m}" for m in models], log)


class Timed:
    """One page (a model at a thread count) and the frame times gathered over the rounds."""

    def __init__(self, browser, url: str, model_url: str, threads: int):
        self.page = page_driver.open_page(browser, url, f"?model={model_url}&threads={threads}&photo=none")
        page_driver.upload(self.page, PHOTO)
        self.photo: dict[str, list[float]] = {}
        self.webcam: list[float] = []
        self.fps: list[float] = []
        self.faces = 0

    def round(self, frames: int) -> None:
        self.page.bring_to_front()
        times = self.page.evaluate("n => tinybeauty.benchmark(n)", frames)
        for key, values in times.items():  # lists (this page); one median a round (an older page)
            self.photo.setdefault(key, []).extend(values if isinstance(values, list) else [values])
        self.page.click("#webcam")
        self.page.wait_for_function("() => tinybeauty.state.error || tinybeauty.state.last.source === 'webcam'")
        first, start = page_driver.check(self.page)["runs"], time.perf_counter()
        self.page.wait_for_function(f"() => tinybeauty.state.error || tinybeauty.state.webcamMs.length >= {frames}")
        state = page_driver.check(self.page)
        self.fps.append((state["runs"] - first) / (time.perf_counter() - start))
        self.webcam += state["webcamMs"][-frames:]
        self.faces = len(state["last"]["faces"])
        self.page.click("#webcam")
        page_driver.upload(self.page, PHOTO)  # back to the photo for the next round

    def result(self) -> dict:
        photo = {key.removesuffix("Ms") + "_ms": round(median(values), 1) for key, values in self.photo.items()}
        return {
            "photo_350": photo,
            "webcam_640x480": {"frame_ms": round(median(self.webcam), 1), "fps": round(median(self.fps), 1),
                               "faces": self.faces, "frames": len(self.webcam)},
        }  # fmt: skip


def python_ort_times(path: Path, threads: int, runs: int) -> list[float]:
    session = ort_session(path, threads)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 256, 256)).astype(np.float32)
    times = []
    for i in range(runs + 3):
        start = time.perf_counter()
        session.run(None, {"source": x})
        if i >= 3:  # warm-up
            times.append((time.perf_counter() - start) * 1000)
    return times


def framing(browser, url: str, model: str) -> dict:
    """The page's crop box and eye angle against data/face_align.py's, per sample face (in box sides)."""
    page = page_driver.open_page(browser, url, f"?model={model}&photo=none")
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


def webgpu_software(browser, url: str, model_url: str, frames: int = 5) -> dict:
    """The page forced onto WebGPU in a second Chromium (from the same Playwright) whose only adapter is
    SwiftShader: WebGPU run on the CPU."""
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    other = browser.browser_type.launch(executable_path=page_driver.CHROMIUM, headless=True,
                                        args=[*args, "--enable-unsafe-swiftshader", "--enable-unsafe-webgpu"])  # fmt: skip
    try:
        page = page_driver.open_page(other, url, f"?model={model_url}&backend=webgpu&photo=none")
        backend = page.evaluate("() => tinybeauty.state.backend")
        page_driver.upload(page, PHOTO)
        times = page.evaluate("n => tinybeauty.benchmark(n)", frames)
    finally:
        other.close()
    return {"backend": backend, "frames": frames,
            **{key.removesuffix("Ms") + "_ms": round(median(values), 1) for key, values in times.items()}}  # fmt: skip


def browser_facts(page) -> dict:
    return page.evaluate("""async () => {
        let webgpu = "navigator.gpu absent";
        if (navigator.gpu) {
          const adapter = await navigator.gpu.requestAdapter().catch(() => null);
          webgpu = adapter ? `adapter: ${adapter.info?.vendor || "?"} ${adapter.info?.architecture || ""}`
                           : "navigator.gpu present, no adapter (no GPU)";
        }
        return { cross_origin_isolated: self.crossOriginIsolated, hardware_concurrency: navigator.hardwareConcurrency,
                 webgpu, backend_used: tinybeauty.state.backend };
    }""")


def stand_in(folder: Path) -> list[Path]:
    int8 = page_driver.stand_in_model(folder)
    return [folder / "tinybeauty_fp32.onnx", int8]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="exported ONNX (repeatable; default: stand-in)")
    parser.add_argument("--style", default=None, help="a shipped style: its fp32 and int8 exports")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="WASM thread counts to time")
    parser.add_argument("--frames", type=int, default=10, help="frames a page is timed for, each round")
    parser.add_argument("--rounds", type=int, default=5, help="turns over all pages (default: %(default)s)")
    parser.add_argument("--compare-web", default=None, metavar="DIR", help="another web/ folder to time alike")
    parser.add_argument("--webgpu-software", action="store_true", help="also WebGPU on SwiftShader (a few frames)")
    parser.add_argument("--output", default=str(REPO / "bench/results/web_bench.json"), help="JSON result")
    parser.add_argument("--screenshot", default=str(REPO / "bench/results/web_page.png"), help="page screenshot")
    args = parser.parse_args(argv)
    if not 1 <= args.frames <= 30:
        parser.error("--frames must be 1 to 30 (the page keeps its last 30 webcam frame times)")
    reason = page_driver.missing()
    if reason:
        raise SystemExit(f"error: cannot run the browser: {reason}")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        if args.style:
            style = get_style(args.style)
            models = [style.model("fp32"), style.model("int8")]
        else:
            models = [Path(m).resolve() for m in args.model] or stand_in(Path(tmp))
        described = f"style {args.style}" if args.style else None if args.model else "stand-in (untrained TinyBeauty)"
        result = {
            "models": [f"{described}: {m.name}" if described else str(m) for m in models],
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
            "onnxruntime_web": json.loads((page_driver.WEB / "package.json").read_text())["dependencies"],
            "simd": "always: onnxruntime-web 1.30 ships only ort-wasm-simd-threaded.wasm",
            "rounds": args.rounds,
            "frames_per_round": args.frames,
        }
        webcam = page_driver.fake_webcam_video(PHOTO, Path(tmp) / "webcam.y4m")
        url = stack.enter_context(page_driver.serve(models, Path(tmp) / "serve.log"))
        browser = stack.enter_context(page_driver.chromium(webcam))
        result["chromium"] = browser.version
        with urlopen(f"{url}models.json") as response:  # the --model files first, in order
            served = [m["url"] for m in json.load(response)]
        pages = {key_of(m, n): Timed(browser, url, served[i], n) for i, m in enumerate(models) for n in args.threads}
        if args.compare_web:
            other = Path(args.compare_web).resolve()
            other_url = stack.enter_context(serve_other(other, models, Path(tmp) / "serve_other.log"))
            for i, m in enumerate(models):
                for n in args.threads:
                    pages[key_of(m, n, "other page: ")] = Timed(browser, other_url, served[i], n)
            result["other_page"] = str(other)
        result.update(browser_facts(next(iter(pages.values())).page))
        ort_ms = {(m, n): [] for m in models for n in args.threads}
        for index in range(args.rounds):
            order = list(pages.items())
            for key, timed in order if index % 2 == 0 else order[::-1]:  # each page first as often as last
                timed.round(args.frames)
                if index == 0 and key == key_of(models[0], args.threads[0]):
                    timed.page.screenshot(path=str(args.screenshot), full_page=True)
            for (model, threads), times in ort_ms.items():
                times += python_ort_times(model, threads, 3 * args.frames)
            print(f"round {index + 1} of {args.rounds} done (load average {os.getloadavg()[0]:.2f})", flush=True)
        for key, timed in pages.items():
            result[key] = timed.result()
            if not key.startswith("other page: "):
                model, threads = next((m, n) for m in models for n in args.threads if key_of(m, n) == key)
                result[key]["python_onnxruntime_ms"] = round(median(ort_ms[(model, threads)]), 2)
            print(json.dumps({key: result[key]}), flush=True)
        fp32 = [key_of(m, n) for m in models for n in args.threads if "fp32" in m.name]
        if fp32:
            best = min(fp32, key=lambda k: result[k]["webcam_640x480"]["frame_ms"])
            value = result[best]["webcam_640x480"]["frame_ms"]
            result["goal"] = {"what": "fp32 export, webcam frame (640x480) in the page, ms", "goal_ms": GOAL_MS,
                              "value_ms": value, "at": best, "met": value <= GOAL_MS}  # fmt: skip
        result["framing_vs_photo_mode"] = framing(browser, url, served[0])
        if args.webgpu_software:
            fp32 = next(i for i, m in enumerate(models) if "fp32" in m.name)
            result["fp32 on WebGPU, SwiftShader (software)"] = webgpu_software(browser, url, served[fp32])
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    atomic_write_text(Path(args.output), json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

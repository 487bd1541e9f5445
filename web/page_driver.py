"""Drive the web page (web/) in headless Chromium with Playwright: tests/test_web.py and bench/web_bench.py.

The browser is the system's Chromium (Debian's `chromium`: /usr/bin/chromium, or $CHROMIUM), started
by Playwright with `executable_path`; Playwright's own browser builds are never downloaded. The page
is served by web/serve.py on a free port of 127.0.0.1 and read back through `window.tinybeauty`.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import REPO_ROOT, from_uint8, load_config
from data.io import read_rgb, resize_rgb
from deploy.onnx_export import export_onnx, quantize_int8
from deploy.styles import write_style
from models.tinybeauty import TinyBeauty

WEB = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
NEEDED = {
    CHROMIUM: "Chromium (apt-get install chromium)",
    WEB / "node_modules/onnxruntime-web/dist": "web/'s npm packages (bash scripts/setup_web.sh)",
    WEB / "node_modules/@mediapipe/tasks-vision/wasm": "web/'s npm packages (bash scripts/setup_web.sh)",
    WEB / "models/face_detection_short_range.tflite": "the face detector (bash scripts/setup_web.sh)",
}
TINYBEAUTY_CONFIG = REPO_ROOT / "configs" / "tinybeauty.yaml"
TIMEOUT_MS = 90_000  # WASM compile and model load on two busy cores


def missing() -> str | None:
    """What the browser run lacks here, in words, or None when it can run."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -r requirements.txt)"
    for path, what in NEEDED.items():
        if not Path(path).exists():
            return f"{what} not found: {path}"
    return None


@contextmanager
def serve_folder(web: Path, args: list[str], log: Path) -> Iterator[str]:
    """`web`/serve.py (this web/ or another copy of it) on a free loopback port with `args`, its stderr to
    `log`; yields the page's URL."""
    with open(log, "w") as stderr:
        server = subprocess.Popen(
            [sys.executable, str(web / "serve.py"), "--port", "0", "--quiet", *args],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
        try:
            line = server.stdout.readline()  # "serving http://localhost:PORT/ (Ctrl-C to stop)"
            if not line.startswith("serving "):
                raise RuntimeError(f"{web / 'serve.py'} did not start: {log.read_text()}")
            yield line.split()[1]
        finally:
            server.terminate()
            server.wait(timeout=10)


@contextmanager
def serve(models: list[Path], log: Path, styles: Path | None = None, sample: Path | None = None) -> Iterator[str]:
    """web/serve.py on a free loopback port with `models` offered, and the styles under `styles` (None: an
    empty folder, so the shipped styles do not enter a test); yields the page's URL."""
    if styles is None:
        styles = log.parent / "no_styles"
        styles.mkdir(exist_ok=True)
    extra = [f"--styles={styles}"] + ([f"--sample={sample}"] if sample else [])
    with serve_folder(WEB, [*extra, *(f"--model={m}" for m in models)], log) as url:
        yield url


@contextmanager
def chromium(fake_webcam: Path | None = None):
    """Headless Chromium; `fake_webcam` (a .y4m video) stands in for the camera, permission granted."""
    from playwright.sync_api import sync_playwright  # playwright: only the browser test and bench need it

    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses to run as root with its sandbox
    if fake_webcam is not None:
        args += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-video-capture={fake_webcam}"]  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, query: str = "", viewport: tuple[int, int] = (1000, 820)):
    """A new tab on the page, once its model and face detector have loaded and its sample photo (if any) is
    made up."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url + query)
    page.wait_for_function(
        "() => window.tinybeauty && ((tinybeauty.state.ready && tinybeauty.state.sample !== null) || tinybeauty.state.error)"
    )
    check(page)
    return page


def choose_style(page, url: str) -> dict:
    """Pick `url` in the style menu as a person would, and wait for the frame made with it; returns state.last."""
    page.select_option("#model", url)
    page.wait_for_function(
        "url => tinybeauty.state.error || (tinybeauty.state.last && tinybeauty.state.last.model === url)", arg=url
    )
    return check(page)["last"]


def check(page) -> dict:
    """The page's state; raises with the page's own message when it reports an error."""
    state = page.evaluate("() => tinybeauty.state")
    if state["error"]:
        raise RuntimeError(f"the page says: {state['error']}")
    return state


def upload(page, photo: Path) -> dict:
    """Choose `photo` in the page's file input and wait for its frame; returns state.last."""
    page.set_input_files("#upload", [])  # so that choosing the same file again is a change too
    page.set_input_files("#upload", str(photo))
    return wait_for_frame(page, f"upload:{photo.name}", None)


def set_intensity(page, value: float) -> dict:
    """Move the intensity slider as a person would (an input event) and wait for the new frame."""
    page.fill("#intensity", str(value))
    return wait_for_frame(page, None, value)


def set_regions(page, **levels: float) -> dict:
    """Move the per-region sliders (lips=, eyes=, skin=) as a person would and wait for a frame made with them."""
    for name, value in levels.items():
        page.fill(f"#{name}", str(value))
    page.wait_for_function(
        """(levels) => tinybeauty.state.error || (tinybeauty.state.last && tinybeauty.state.last.regions
            && Object.entries(levels).every(([name, value]) => tinybeauty.state.last.regions[name] === value))""",
        arg=levels,
    )
    return check(page)["last"]


def wait_for_frame(page, source: str | None, intensity: float | None) -> dict:
    page.wait_for_function(
        """([source, intensity]) => tinybeauty.state.error || (tinybeauty.state.last
            && (source === null || tinybeauty.state.last.source === source)
            && (intensity === null || tinybeauty.state.last.intensity === intensity))""",
        arg=[source, intensity],
    )
    return check(page)["last"]


def read_canvas(page, canvas_id: str) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a canvas, through a lossless PNG."""
    url = page.evaluate("id => document.getElementById(id).toDataURL('image/png')", canvas_id)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


WARM_TINT = (0.12, -0.06, 0.04)  # stand_in_model's default head bias: a warm tint, to see where it pasted
RED_TINT = (0.3, -0.12, -0.08)  # a reddening one, for a second stand-in style that differs visibly


def stand_in_model(folder: Path, seed: int = 0, tint: tuple[float, float, float] = WARM_TINT) -> Path:
    """An untrained TinyBeauty exported as tinybeauty_export.py does (fp32, then static int8 calibrated
    on the sample faces), with a random non-zero output head (bias `tint`, in [-1, 1] units per RGB channel)
    so its change is visible; returns the int8 path (the fp32 one is beside it)."""

    torch.manual_seed(seed)
    # configs/tinybeauty.yaml's layers, what stage 4 trains (TinyBeauty()'s own defaults are the previous,
    # full-resolution layout, kept for old checkpoints); its head starts at zero
    model = TinyBeauty(**load_config(TINYBEAUTY_CONFIG).model).eval()
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.05)
        model.head.bias.copy_(torch.tensor(tint))
    faces = sorted((WEB.parent / "data/samples/faces").glob("*.jpg"))[:8]
    calibration = torch.stack([from_uint8(np.asarray(resize_rgb(read_rgb(p), 256))) for p in faces]).numpy()
    fp32 = export_onnx(model, folder / "tinybeauty_fp32.onnx", 256)
    return quantize_int8(fp32, folder / "tinybeauty_int8.onnx", calibration)


def stand_in_style(root: Path, name: str, seed: int = 0, tint: tuple[float, float, float] = WARM_TINT) -> Path:
    """A style folder root/NAME as make_style.py writes one (deploy/styles.py's layout), around an untrained
    stand_in_model: for tests, which point the styles registry at `root`. Returns the folder."""
    work = root / f".{name}_export"
    int8 = stand_in_model(work, seed, tint)
    card = f"# {name}\n\nA stand-in style for tests: an untrained TinyBeauty (seed {seed}, head bias {tint}).\n"
    meta = {"title": f"Stand-in {name}", "description": "untrained, for tests", "made_by": "web/page_driver.py"}
    write_style(root / name, work / "tinybeauty_fp32.onnx", int8, card, meta)
    return root / name


def fake_webcam_video(photo: Path, path: Path, size: tuple[int, int] = (640, 480), frames: int = 2) -> Path:
    """A .y4m clip of `photo` centred on a grey frame: Chromium's fake camera loops it."""
    width, height = size
    frame = Image.new("RGB", size, (128, 128, 128))
    face = Image.open(photo).convert("RGB")
    face.thumbnail((height, height))
    frame.paste(face, ((width - face.width) // 2, (height - face.height) // 2))
    ycbcr = np.asarray(frame.convert("YCbCr"))  # JPEG's full-range BT.601, the C420jpeg of the header
    y = ycbcr[..., 0]
    cb, cr = (np.asarray(Image.fromarray(ycbcr[..., i]).resize((width // 2, height // 2))) for i in (1, 2))
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            out.write(b"FRAME\n" + y.tobytes() + cb.tobytes() + cr.tobytes())
    return path

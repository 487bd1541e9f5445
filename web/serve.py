"""Serve the TinyBeauty web page (web/) to a browser on this machine or on a phone.

    bash scripts/setup_web.sh   # once (scripts/setup_env.sh runs it): npm packages, the face detector
    python web/serve.py                                                       # the shipped styles: http://localhost:8000/
    python web/serve.py --model export/tinybeauty_fp32.onnx                   # your own export first in the menu
    python web/serve.py --styles runs/my_styles --sample my_face.jpg          # other styles, another photo on load
    python web/serve.py --host 0.0.0.0 --cert cert.pem --key key.pem          # a phone: https://IP:8000/

A static file server for web/ with four additions over `python -m http.server` (which also works,
from web/, with the ONNX copied into web/models/, but opens on no photo and one WASM thread):
- the shipped styles (weights/styles/NAME/, deploy/styles.py; --styles DIR or $TINYBEAUTY_STYLES for
  others) are served as /styles/NAME/tinybeauty_{fp32,int8}.onnx, each --model file as /models/NAME, and
  /models.json lists them (the --model files, then each style's fp32 export under its title, then
  web/models/*.onnx), so the page's style menu offers them (the first is the default). The styles are listed
  by how plainly they show on the sample photo, most first, so the page opens on the one that reads best:
  each fp32 export runs (ONNX Runtime) on the sample's face, framed as the page frames it (data/face_align.py;
  the whole photo when no face is found), and the figure is its mean change over the 1% of that crop's pixels
  it changes most, in grey levels (`change` in models.json; a mean over the whole crop would put a faint blush
  spread wide first; about 2 s at start);
- /sample.jpg is a bundled face (data/samples/faces/AF1.jpg, or --sample PHOTO), which the page shows
  made up as soon as it has loaded;
- each .onnx goes out without its intensity blend (deploy.onnx_export.without_intensity: the page blends in
  JavaScript; four full-size element-wise ops fewer, about 10% of the model's time in WASM);
- cross-origin isolation headers (COOP/COEP), without which browsers give no SharedArrayBuffer and
  onnxruntime-web runs on one WASM thread;
- HTTPS with --cert/--key: a browser gives a page the camera only on https or http://localhost.
`--port 0` picks a free port; the URL is printed on the first line of stdout.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from functools import lru_cache, partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import onnx

from deploy.crop_model import MakeupModel
from deploy.onnx_export import without_intensity
from deploy.styles import MODEL_FILES, list_styles, styles_root

WEB = Path(__file__).resolve().parent
SAMPLE = WEB.parent / "data" / "samples" / "faces" / "AF1.jpg"  # SCUT-FBP5500: non-commercial research use
NEEDED = {
    "node_modules/onnxruntime-web/dist": "bash scripts/setup_web.sh (npm packages)",
    "node_modules/@mediapipe/tasks-vision/wasm": "bash scripts/setup_web.sh (npm packages)",
}
DETECTOR = "models/face_detection_short_range.tflite"


class Handler(SimpleHTTPRequestHandler):
    models: dict[str, Path] = {}  # URL path -> file: the --model files, the styles' exports, /sample.jpg
    menu: list[dict] = []  # what /models.json says, before web/models/*.onnx
    quiet = False
    # Browsers load ES modules and stream-compile WASM only with these types; not every Python's
    # mimetypes table has them (it reads the system's /etc/mime.types).
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")  # a re-exported model is picked up on reload
        super().end_headers()

    def translate_path(self, path: str) -> str:
        served = self.models.get(path.split("?", 1)[0].split("#", 1)[0])
        return str(served) if served else super().translate_path(path)

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if path.suffix == ".onnx" and path.is_file():
            try:
                body = page_model(path)
            except Exception as err:  # not an ONNX the page could run either: say so, keep serving
                self.send_error(500, f"{path.name}: not a readable ONNX ({err})")
                return
            self.send_body(body, "application/octet-stream")
            return
        if self.path.split("?", 1)[0] == "/models.json":
            self.send_body(json.dumps(model_list(self.menu)).encode(), "application/json")
            return
        super().do_GET()

    def send_body(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


@lru_cache(maxsize=32)
def _page_model(path: Path, mtime_ns: int) -> bytes:
    return without_intensity(onnx.load(str(path))).SerializeToString()


def page_model(path: Path) -> bytes:
    """The bytes of an export as the page gets them: without the intensity blend (made again when the file changes)."""
    return _page_model(path, path.stat().st_mtime_ns)


def model_list(menu: list[dict]) -> list[dict]:
    """The --model files and the styles first, then web/models/*.onnx (what the page's menu offers)."""
    listed = list(menu)
    for path in sorted((WEB / "models").glob("*.onnx")):
        url = f"models/{path.name}"
        if not any(m["url"] == url for m in listed):
            listed.append({"name": path.name, "url": url})
    return listed


def served_models(paths: list[str]) -> dict[str, Path]:
    """/models/NAME for each file; two files with one name get their folder's name in front."""
    models: dict[str, Path] = {}
    for name in paths:
        path = Path(name).resolve()
        if not path.is_file():
            raise SystemExit(f"error: --model {name}: no such file (tinybeauty_export.py writes tinybeauty_int8.onnx)")
        url = f"/models/{path.name}"
        if url in models:
            url = f"/models/{path.parent.name}/{path.name}"
        models[url] = path
    return models


def served_styles(root: Path) -> tuple[dict[str, Path], list[dict]]:
    """/styles/NAME/FILE for both exports of each complete style; the menu lists the fp32 one (in the browser's
    WASM about 3x faster than int8) under the style's title. A folder that is not a complete style is named
    on stderr, with what it lacks."""
    styles, broken = list_styles(root)
    for name, reason in broken.items():
        print(f"warning: style {name} left out: {reason}", file=sys.stderr)
    files, menu = {}, []
    for style in styles:
        for precision in MODEL_FILES:
            files[f"/styles/{style.name}/{style.model(precision).name}"] = style.model(precision)
        url = f"styles/{style.name}/{style.model('fp32').name}"
        menu.append({"name": style.title, "url": url, "style": style.name, "file": style.model("fp32")})
    return files, menu


TOP_SHARE = 0.01  # style_change: the share of the crop's pixels it averages, those the style changes most


def style_change(model: Path, face) -> float:
    """How plainly a style shows on a face crop: the mean change (grey levels, the largest channel's) over the 1%
    of the crop's pixels it changes most. A style reads by its strongest feature (lips, liner); a faint blush
    spread over the cheeks changes more pixels a little and would win a mean over the whole crop."""
    import numpy as np

    engine = MakeupModel(model, "onnxruntime", threads=1)
    change = np.abs(engine.makeup(face).astype(np.int16) - face).max(-1).ravel()
    top = max(1, int(round(TOP_SHARE * change.size)))
    return float(np.partition(change, change.size - top)[-top:].mean())


def rank_styles(menu: list[dict], sample: Path) -> list[dict]:
    """served_styles' entries for models.json, the most visible on `sample` first, each with its figure as
    "change"; in their own order when the sample cannot be read."""
    from data.face_align import FaceAligner
    from data.io import ImageReadError, read_rgb

    files = {entry["url"]: entry.pop("file") for entry in menu}
    try:
        photo = read_rgb(sample)
    except (ImageReadError, OSError):
        return menu
    with FaceAligner(size=256) as aligner:
        faces = aligner.detect(photo)
    face = faces[0].crop if faces else photo
    ranked = [{**entry, "change": round(style_change(files[entry["url"]], face), 3)} for entry in menu]
    return sorted(ranked, key=lambda entry: -entry["change"])


def check_web_folder() -> None:
    missing = [f"{WEB / rel} (run {fix})" for rel, fix in NEEDED.items() if not (WEB / rel).is_dir()]
    if missing:
        raise SystemExit("error: the page's packages are missing:\n  " + "\n  ".join(dict.fromkeys(missing)))
    if not (WEB / DETECTOR).is_file():
        print(f"warning: {WEB / DETECTOR} is missing (bash scripts/setup_web.sh copies it from the mediapipe "
              "wheel): the page falls back to a fixed crop with an oval guide", file=sys.stderr)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="an exported ONNX to offer first (repeatable)")
    parser.add_argument("--styles", default=None, help="styles folder (default: $TINYBEAUTY_STYLES or weights/styles)")
    parser.add_argument("--sample", default=None, help=f"the photo shown on load (default: {SAMPLE})")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: other devices too)")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--cert", help="PEM certificate for HTTPS (with --key)")
    parser.add_argument("--key", help="PEM private key for HTTPS")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    check_web_folder()
    models = served_models(args.model)
    style_files, style_menu = served_styles(styles_root(args.styles))
    if args.sample and not Path(args.sample).is_file():
        parser.error(f"--sample {args.sample}: no such file")
    sample = Path(args.sample or SAMPLE).resolve()
    if not sample.is_file():  # a copy of web/ outside the repository: the page opens on no photo
        print(f"warning: {sample} not found: the page opens on no photo", file=sys.stderr)
    Handler.models = {**models, **style_files, **({"/sample.jpg": sample} if sample.is_file() else {})}
    style_menu = rank_styles(style_menu, sample)  # the page opens on the most visible
    Handler.menu = [{"name": url.removeprefix("/models/"), "url": url[1:]} for url in models] + style_menu
    if not Handler.menu and not list((WEB / "models").glob("*.onnx")):
        print(f"warning: no styles in {styles_root(args.styles)} and no --model: the page has no model to run "
              "(make_style.py makes a style; tinybeauty_export.py an ONNX for --model)", file=sys.stderr)  # fmt: skip
    Handler.quiet = args.quiet
    server = ThreadingHTTPServer((args.host, args.port), partial(Handler, directory=str(WEB)))
    scheme = "http"
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0", "") else args.host
    print(f"serving {scheme}://{host}:{server.server_address[1]}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

"""Serve the TinyBeauty web page (web/) to a browser on this machine or on a phone.

    bash scripts/setup_web.sh   # once (scripts/setup_env.sh runs it): npm packages, the face detector
    python web/serve.py --model export/tinybeauty_int8.onnx                   # http://localhost:8000/
    python web/serve.py --model style1/tinybeauty_int8.onnx --model style2/tinybeauty_int8.onnx
    python web/serve.py --model M --host 0.0.0.0 --cert cert.pem --key key.pem  # a phone: https://IP:8000/

A static file server for web/ with three additions over `python -m http.server` (which also works,
from web/, with the ONNX copied into web/models/):
- each --model file is served as /models/NAME, and /models.json lists them with web/models/*.onnx,
  so the page's style menu offers them (the first is the default);
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
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

WEB = Path(__file__).resolve().parent
NEEDED = {
    "node_modules/onnxruntime-web/dist": "bash scripts/setup_web.sh (npm packages)",
    "node_modules/@mediapipe/tasks-vision/wasm": "bash scripts/setup_web.sh (npm packages)",
}
DETECTOR = "models/face_detection_short_range.tflite"


class Handler(SimpleHTTPRequestHandler):
    models: dict[str, Path] = {}  # URL path -> file, from --model
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
        if self.path.split("?", 1)[0] == "/models.json":
            body = json.dumps(model_list(self.models)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def model_list(models: dict[str, Path]) -> list[dict]:
    """The --model files first, then web/models/*.onnx (what the page's menu offers)."""
    listed = [{"name": url.removeprefix("/models/"), "url": url[1:]} for url in models]
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


def check_web_folder() -> None:
    missing = [f"{WEB / rel} (run {fix})" for rel, fix in NEEDED.items() if not (WEB / rel).is_dir()]
    if missing:
        raise SystemExit("error: the page's packages are missing:\n  " + "\n  ".join(dict.fromkeys(missing)))
    if not (WEB / DETECTOR).is_file():
        print(f"warning: {WEB / DETECTOR} is missing (bash scripts/setup_web.sh copies it from the mediapipe "
              "wheel): the page falls back to a fixed crop with an oval guide", file=sys.stderr)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="an exported ONNX to offer (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: other devices too)")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--cert", help="PEM certificate for HTTPS (with --key)")
    parser.add_argument("--key", help="PEM private key for HTTPS")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    check_web_folder()
    Handler.models = served_models(args.model)
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

"""Shipped makeup styles: trained TinyBeauty exports under weights/styles/NAME/, used without training.

A style folder holds what `make_style.py` writes:

    tinybeauty_fp32.onnx   the model (what --style runs by default, see DEFAULT_PRECISION)
    tinybeauty_int8.onnx   the phone-sized model (under 100 KB)
    tinybeauty_int8.tflite Android: full-integer int8 LiteRT (optional: with the phone environment, see below)
    tinybeauty.mlpackage   iOS: Core ML ML program, fp16 (optional, as the .tflite)
    README.md              the model card: the command that made it, the seed faces, the time, the licence, quality
    style.json             {"title": "Smoky eye", "description": "...", ...}: what menus show

The phone files come from `tinybeauty_export.py --format onnx,tflite,coreml` (deploy/mobile_export.py documents
their inputs and outputs); make_style.py adds them when scripts/setup_mobile.sh has made the phone environment.
`tinybeauty_inference.py --style NAME`, `tinybeauty_video.py --style NAME`, the web page (web/serve.py) and
scripts/gallery.py find them here. The styles root is `weights/styles/` in the repository, or
$TINYBEAUTY_STYLES, or the `root` argument of each function. `--style` also takes the path of a style
folder (any name with a `/`), e.g. the --out folder of `make_style.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO_ROOT, atomic_write, atomic_write_dir, atomic_write_text
from errors import InputError

STYLES_ENV = "TINYBEAUTY_STYLES"
DEFAULT_ROOT = REPO_ROOT / "weights" / "styles"
MODEL_FILES = {"fp32": "tinybeauty_fp32.onnx", "int8": "tinybeauty_int8.onnx"}
PHONE_FILES = {"tflite": "tinybeauty_int8.tflite", "coreml": "tinybeauty.mlpackage"}  # optional, for apps
CARD, META = "README.md", "style.json"
REQUIRED = (MODEL_FILES["fp32"], MODEL_FILES["int8"], CARD, META)
# fp32 by default: on a desktop CPU it is as fast as int8 (ONNX Runtime: bench/results/video_bench.json), in
# the browser's WASM about 3x faster (bench/results/web_bench.json), and it is the model's exact output
# (int8 loses about 0.1 dB). int8 is the phone's file (under 100 KB); `--precision int8` runs it.
DEFAULT_PRECISION = "fp32"


class StyleError(InputError):
    """An unknown style name, or a style folder that lacks a file or has a bad style.json (named in the message)."""


@dataclass(frozen=True)
class Style:
    name: str  # the folder's name
    folder: Path
    title: str  # style.json's "title": what a menu shows
    description: str = ""
    meta: dict = field(default_factory=dict, compare=False)  # style.json as read

    def model(self, precision: str = DEFAULT_PRECISION) -> Path:
        if precision not in MODEL_FILES:
            raise StyleError(f"precision must be one of {', '.join(MODEL_FILES)}, not '{precision}'")
        return self.folder / MODEL_FILES[precision]

    def phone_files(self) -> dict[str, Path]:
        """{"tflite": path, "coreml": path} of the phone files this style has (none for a style made without them)."""
        return {kind: self.folder / name for kind, name in PHONE_FILES.items() if (self.folder / name).exists()}

    def digests(self) -> dict[str, str]:
        """sha256 of the models and style.json: what a picture made from this style depends on."""
        return {name: file_digest(self.folder / name) for name in (*MODEL_FILES.values(), META)}


def styles_root(root: str | os.PathLike | None = None) -> Path:
    """`root`, else $TINYBEAUTY_STYLES, else weights/styles/ in the repository."""
    return Path(root or os.environ.get(STYLES_ENV) or DEFAULT_ROOT)


def style_folders(root: str | os.PathLike | None = None) -> list[Path]:
    """Every folder directly under the styles root (hidden ones skipped), sorted by name."""
    root = styles_root(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_style(folder: str | os.PathLike) -> Style:
    """The style in `folder`; StyleError naming the folder and the missing file or the bad key."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StyleError(f"style folder not found: {folder}")
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise StyleError(
            f"style folder {folder} lacks {', '.join(missing)} (make_style.py writes all of {', '.join(REQUIRED)})"
        )
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StyleError(f"{folder / META}: not readable JSON ({err})") from None
    if not isinstance(meta, dict):
        raise StyleError(f"{folder / META}: must hold a JSON object, not {type(meta).__name__}")
    for key in ("title", "description"):
        if key in meta and not isinstance(meta[key], str):
            raise StyleError(f"{folder / META}: key '{key}' must be a string, not {meta[key]!r}")
    return Style(folder.name, folder, meta.get("title") or folder.name, meta.get("description", ""), meta)


def list_styles(root: str | os.PathLike | None = None) -> tuple[list[Style], dict[str, str]]:
    """(the complete styles, {folder name: why it is not usable}) under the styles root."""
    styles, broken = [], {}
    for folder in style_folders(root):
        try:
            styles.append(load_style(folder))
        except StyleError as err:
            broken[folder.name] = str(err)
    return styles, broken


def get_style(name: str, root: str | os.PathLike | None = None) -> Style:
    """A shipped style by name, or a style folder by path (a name with a '/'). An unknown name: StyleError
    listing the known ones; a folder lacking a file: StyleError naming both."""
    if "/" in name or os.sep in name:
        return load_style(name)
    folder = styles_root(root) / name
    if folder.is_dir() and not name.startswith("."):
        return load_style(folder)
    styles, broken = list_styles(root)
    where = styles_root(root)
    incomplete = f"; {len(broken)} folder(s) there are not complete styles (--list-styles says why)" if broken else ""
    if not styles:
        raise StyleError(f"unknown style '{name}': no styles in {where} yet (make_style.py makes one){incomplete}")
    known = ", ".join(style.name for style in styles)
    raise StyleError(f"unknown style '{name}': the styles in {where} are {known}{incomplete}")


def add_style_arguments(model_group, parser, precision_note: str = "") -> None:
    """`--style`, `--list-styles` (in the script's mutually exclusive model group) and `--precision`."""
    model_group.add_argument("--style", help="a shipped style (--list-styles) or a style folder: no training needed")
    model_group.add_argument("--list-styles", action="store_true", help="print the shipped styles and exit")
    parser.add_argument("--precision", choices=tuple(MODEL_FILES), default=DEFAULT_PRECISION,
                        help=f"with --style: which export runs (default: %(default)s{precision_note})")  # fmt: skip


def describe_styles(root: str | os.PathLike | None = None) -> str:
    """The text of --list-styles: one line per style, then the folders that are not usable and why."""
    where = styles_root(root)
    styles, broken = list_styles(root)
    if not styles and not broken:
        return f"no styles in {where} yet (make_style.py makes one; {STYLES_ENV}=DIR looks elsewhere)"
    width = max(len(name) for name in [s.name for s in styles] + list(broken))
    lines = [f"styles in {where} (--style NAME):"]
    for style in styles:
        sizes = ", ".join(f"{p} {style.model(p).stat().st_size / 1024:.0f} KB" for p in MODEL_FILES)
        phone = style.phone_files()
        sizes += f"; phones: {', '.join(phone)}" if phone else ""
        about = f": {style.description}" if style.description else ""
        lines.append(f"  {style.name:<{width}}  {style.title}{about} ({sizes})")
    for name, reason in broken.items():
        lines.append(f"  {name:<{width}}  not usable: {reason}")
    return "\n".join(lines)


def write_style(folder: str | os.PathLike, fp32: Path, int8: Path, card: str, meta: dict,
                phone: dict[str, Path] | None = None) -> Style:  # fmt: skip
    """Make `folder` a style folder: the two exports (and the phone files in `phone`, {"tflite": path,
    "coreml": path}) copied in, the model card and style.json written (each file atomically; a .mlpackage
    folder whole, then renamed; style.json last). Returns the style as load_style reads it back."""
    folder = Path(folder)
    for precision, source in (("fp32", fp32), ("int8", int8)):
        atomic_write(folder / MODEL_FILES[precision], lambda tmp, source=source: shutil.copyfile(source, tmp))
    for kind, source in (phone or {}).items():
        target = folder / PHONE_FILES[kind]
        if Path(source).is_dir():
            atomic_write_dir(target, lambda staged, source=source: shutil.copytree(source, staged))
        else:
            atomic_write(target, lambda tmp, source=source: shutil.copyfile(source, tmp))
    atomic_write_text(folder / CARD, card)
    atomic_write_text(folder / META, json.dumps(meta, indent=1) + "\n")
    return load_style(folder)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""What every stage script needs, in one place.

Config loading with dotted overrides, seeding and RNG state, atomic file writes, run folders with
their log and resolved config, safe checkpoint I/O, image grids, metrics (PSNR/SSIM), the WandB
wrapper and the command-line entry (`run_cli`). Stage scripts import from here and never copy any of it.

Errors are the project's own types (`errors.py`); only `run_cli` turns them into an exit code.
Nothing here runs on import.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import math
import os
import pickle
import random
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode
from PIL import Image, ImageDraw

from errors import CheckpointError, ConfigError, InputError, MakeupError

__all__ = ["CheckpointError", "ConfigError", "InputError", "MakeupError"]  # re-exported for the stage scripts

REPO_ROOT = Path(__file__).resolve().parent
log = logging.getLogger("makeup")


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
def _typed(value: Any) -> Any:
    """Turn a plain YAML tree into OmegaConf typed nodes, so the default file is the schema.

    A key whose default is an int only takes ints, a float takes numbers, a string takes strings,
    a bool takes bools. A default of null takes anything (used for optional paths and free maps).
    """
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return value  # lists stay untyped: widths, target modules, names
    if isinstance(value, bool):
        return BooleanNode(value)
    if isinstance(value, int):
        return IntegerNode(value)
    if isinstance(value, float):
        return FloatNode(value)
    if isinstance(value, str):
        return StringNode(value)
    return AnyNode(value)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # yaml.YAMLError and friends: name the file
        raise ConfigError(f"could not parse config file {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _explain(err: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    first_line = str(err).splitlines()[0]
    return ConfigError(f"config key '{key}' ({origin}): {first_line}")


def load_config(
    default_path: str | os.PathLike,
    overrides: Sequence[str] = (),
    config_path: str | os.PathLike | dict | None = None,
) -> DictConfig:
    """Load a stage config: the stage's default YAML is the schema.

    `config_path` (another YAML, e.g. `configs/demo/tinybeauty.yaml`, or a mapping such as the config
    saved in a checkpoint) and then `overrides` (`train.epochs=2`) are merged on top. An unknown key or a value of the wrong type raises
    ConfigError naming the key.
    """
    default_path = Path(default_path)
    schema = OmegaConf.create(_typed(_read_yaml(default_path)))
    OmegaConf.set_struct(schema, True)
    cfg = schema
    if isinstance(config_path, dict):
        layer, origin = config_path, "in the given config"
    elif config_path is not None and Path(config_path).resolve() != default_path.resolve():
        layer, origin = _read_yaml(Path(config_path)), f"in {config_path}"
    else:
        layer = None
    if layer is not None:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(layer))
        except OmegaConfBaseException as err:
            raise _explain(err, origin) from err
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.epochs=2)")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([_keep_words(cfg, item)]))
        except OmegaConfBaseException as err:
            raise _explain(err, f"override '{item}'") from err
    return cfg


YAML_BOOL_WORDS = {"yes", "no", "on", "off", "y", "n", "true", "false"}


def _keep_words(cfg: DictConfig, item: str) -> str:
    """`key=no` for a string-typed key means the word, not YAML 1.1's false (`model.mixed_precision=no`
    would otherwise arrive as "False"): quote such a value so the key gets what the user typed."""
    key, value = item.split("=", 1)
    if value.strip().lower() in YAML_BOOL_WORDS and isinstance(OmegaConf.select(cfg, key, default=None), str):
        return f"{key}='{value.strip()}'"
    return item


def stage_argparser(doc: str | None, default_config: str | os.PathLike) -> argparse.ArgumentParser:
    """The command line every training stage shares: `--config`, `--resume`, then key=value overrides."""
    parser = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: any config key as key=value, e.g. train.epochs=2 data.root=DIR",
    )
    parser.add_argument("--config", default=str(default_config), help="YAML config (default: %(default)s)")
    parser.add_argument("--resume", default=None, metavar="PATH", help="checkpoint to continue from exactly")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return parser


def parse_stage_args(
    doc: str | None, default_config: str | os.PathLike, argv: Sequence[str] | None = None
) -> tuple[argparse.Namespace, DictConfig]:
    """Parse the shared command line and load the config (a bad key raises ConfigError naming it)."""
    args = stage_argparser(doc, default_config).parse_intermixed_args(argv)  # --resume may follow key=value overrides
    return args, load_config(default_config, args.overrides, args.config)


def parse_resumable_args(
    doc: str | None, default_config: str | os.PathLike, argv: Sequence[str] | None = None
) -> tuple[argparse.Namespace, DictConfig, dict | None]:
    """The shared command line, plus `--resume CKPT`: without `--config` the run continues with the
    checkpoint's config (overrides on top). Returns the arguments, the config and the loaded checkpoint."""
    args = stage_argparser(doc, default_config).parse_intermixed_args(argv)
    ckpt = load_checkpoint(args.resume) if args.resume else None
    from_ckpt = ckpt is not None and Path(args.config).resolve() == Path(default_config).resolve()
    if ckpt is not None and not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{args.resume} holds no config: not a training checkpoint of this project")
    cfg = load_config(default_config, args.overrides, dict(ckpt["config"]) if from_ckpt else args.config)
    return args, cfg, ckpt


def config_to_dict(cfg: DictConfig | dict) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else dict(cfg)


# --------------------------------------------------------------------------------------------
# Seeding and RNG state (for exact resume)
# --------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states as tensors and plain numbers, so a checkpoint
    that holds them loads with `torch.load(weights_only=True)`."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return rng_state_as_tensors(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)


def rng_state_as_tensors(python: tuple, numpy: tuple, torch_state: torch.Tensor, cuda=None) -> dict:
    """Python's `random.getstate()` and numpy's `get_state()` tuples in the layout `set_rng_state` reads
    (also how convert_checkpoint.py rewrites the tuples older checkpoints held)."""
    version, words, gauss = python
    _, keys, pos, has_gauss, cached = numpy
    state = {
        "python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch_state,
    }
    if cuda is not None:
        state["cuda"] = list(cuda)
    return state


def set_rng_state(state: dict) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def get_device(prefer: str = "auto") -> torch.device:
    """`auto`: CUDA when available, CPU otherwise."""
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(prefer)


# --------------------------------------------------------------------------------------------
# Atomic writes: a killed run never leaves a half-written file under its final name
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask (read once: os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write_fn) -> Path:
    """Call `write_fn(tmp_path)` on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_dir(path: str | os.PathLike, write_fn) -> Path:
    """`atomic_write` for a folder (an .mlpackage): `write_fn(tmp_path)` makes it beside `path` under a hidden
    name, then it replaces `path` (a folder cannot be renamed over another, so the old one goes first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        write_fn(staged)
        if path.exists():
            shutil.rmtree(path)
        staged.rename(path)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_save_image(image: Image.Image | np.ndarray, path: str | os.PathLike) -> Path:
    """Save a PIL image or an HxW[xC] uint8 array; the format follows the final suffix."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """torch.save through a temporary file, then rename. `state` must hold only what `load_checkpoint`
    reads back without pickle: tensors, numbers, strings, None, and dicts/lists/tuples of them."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


CONVERT_HINT = "python convert_checkpoint.py"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with `torch.load(weights_only=True)`: tensors and plain containers only.

    A file that needs pickle to load (a custom class, a numpy array, any callable) is refused with
    CheckpointError and nothing in it is run. Files written before checkpoints were made safe hold
    numpy RNG states; `python convert_checkpoint.py FILE` converts one the user trusts, once.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it needs pickle to load ({_unpickler_reason(err)}), which could run any code "
            "on this machine, so nothing in it was run. A checkpoint from an older version of this project? If you "
            f"trust where it came from, convert it once: {CONVERT_HINT} {path}"
        ) from None
    except Exception as err:
        raise CheckpointError(f"could not read checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this project (it holds a {type(state).__name__})")
    return state


def _unpickler_reason(err: Exception) -> str:
    """The line of torch's long weights-only message that says what was refused."""
    for line in str(err).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__


# --------------------------------------------------------------------------------------------
# Run folders and logging
# --------------------------------------------------------------------------------------------
def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Console and (optionally) a log file, for the `makeup` logger that all stages use."""
    log.setLevel(level)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    log.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(fmt)
        log.addHandler(file_handler)
    return log


# MediaPipe's C++ graphs log through absl (`W0000 ... inference_feedback_manager.cc:114] ...`, `I0000 ...`) and TF
# Lite prints `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`, straight to file descriptor 2: Python's
# logging never sees them, and in mediapipe 0.10.21 neither GLOG_minloglevel nor TF_CPP_MIN_LOG_LEVEL stops them
# (tried). They come while a graph starts and runs its first image, so `QuietNativeStart` catches fd 2 there only.
NATIVE_NOISE = re.compile(
    rb"[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "  # absl/glog INFO and WARNING lines (E and F pass)
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
)
_native_stderr_lock = threading.RLock()  # one redirection of fd 2 at a time: two threads would restore each other's


@contextlib.contextmanager
def native_noise_filtered():
    """Inside: whatever reaches file descriptor 2 (native libraries, Python's sys.stderr) is held in a temporary
    file; on the way out the known native INFO/WARNING lines (`NATIVE_NOISE`) go to the `makeup` log at debug
    level and everything else (errors, tracebacks, progress bars) is written to the real stderr, unchanged."""
    with _native_stderr_lock, tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            passed = []
            for line in io.BytesIO(held.read()):  # split on newlines only: a progress bar's \r stays as it was
                if NATIVE_NOISE.match(line):
                    log.debug("native: %s", line.decode(errors="replace").rstrip())
                else:
                    passed.append(line)
            if passed:
                os.write(2, b"".join(passed))


class QuietNativeStart:
    """A MediaPipe solution (`factory()`: FaceMesh, FaceDetection) made, and its first `process()` run, inside
    `native_noise_filtered`: where its graph logs its start-up lines. Later calls run it directly."""

    def __init__(self, factory: Callable[[], Any]):
        with native_noise_filtered():
            self._solution = factory()
        self._started = False

    def process(self, image: np.ndarray):
        if self._started:
            return self._solution.process(image)
        with native_noise_filtered():
            result = self._solution.process(image)
        self._started = True
        return result

    def close(self) -> None:
        self._solution.close()


def prepare_run_dir(cfg: DictConfig, log_name: str = "train.log") -> Path:
    """Make `cfg.output_dir`, write the resolved config into it and start the log there."""
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    setup_logging(run_dir / log_name)
    log.info("run folder: %s", run_dir.resolve())
    return run_dir


class WandbLogger:
    """WandB in offline mode by default (works with no network); `wandb.mode=disabled` turns it off.

    `cfg.wandb` holds `mode` (offline | online | disabled) and `project`.
    """

    def __init__(self, cfg: DictConfig, run_dir: str | os.PathLike, name: str | None = None):
        self.run = None
        mode = str(cfg.wandb.mode)
        if mode == "disabled":
            return
        if mode not in ("offline", "online"):
            raise ConfigError(f"config key 'wandb.mode' must be offline, online or disabled, not '{mode}'")
        import wandb  # imported here: slow, and not needed when disabled

        self._wandb = wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=str(cfg.wandb.get("project", "tinybeauty")),
            name=name,
            mode=mode,
            dir=str(run_dir),
            config=config_to_dict(cfg),
            reinit="finish_previous",
        )

    def log(self, metrics: dict, step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def image(self, image: Image.Image | str | os.PathLike, caption: str = "") -> Any:
        if self.run is None:
            return None
        if not isinstance(image, Image.Image):
            image = Image.open(image)
        return self._wandb.Image(image, caption=caption)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


# --------------------------------------------------------------------------------------------
# Images: tensors <-> arrays, grids
# --------------------------------------------------------------------------------------------
def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (B, 3, H, W) in [-1, 1] -> (H, W, 3) or (B, H, W, 3) uint8."""
    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    return array.movedim(-3, -1).numpy()


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.array(array)).permute(2, 0, 1).float() / 127.5 - 1.0


def amplify_residual(residual: torch.Tensor, gain: float = 4.0) -> torch.Tensor:
    """A makeup residual (in [-2, 2]) made visible: mid-grey is no change."""
    return (residual * gain).clamp(-1, 1)


def make_grid(
    rows: Sequence[Sequence[np.ndarray | Image.Image]],
    labels: Sequence[str] | None = None,
    pad: int = 4,
    background: int = 255,
) -> Image.Image:
    """Lay images out row by row (each row a sample, each column a kind); optional column titles."""
    cells = [[np.asarray(c.convert("RGB")) if isinstance(c, Image.Image) else c for c in row] for row in rows]
    h = max(c.shape[0] for row in cells for c in row)
    w = max(c.shape[1] for row in cells for c in row)
    ncols = max(len(row) for row in cells)
    title_h = 16 if labels else 0
    canvas = np.full((title_h + len(cells) * (h + pad) + pad, ncols * (w + pad) + pad, 3), background, np.uint8)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            if cell.ndim == 2:
                cell = np.repeat(cell[..., None], 3, axis=2)
            y, x = title_h + pad + r * (h + pad), pad + c * (w + pad)
            canvas[y : y + cell.shape[0], x : x + cell.shape[1]] = cell[..., :3]
    grid = Image.fromarray(canvas)
    if labels:
        draw = ImageDraw.Draw(grid)
        for c, label in enumerate(labels):
            draw.text((pad + c * (w + pad) + 2, 2), label, fill=(0, 0, 0))
    return grid


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB for (B, C, H, W) tensors; images in [-1, 1] have a data range of 2."""
    mse = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5, as Wang et al. 2004), averaged over channels."""
    pred, target = pred.float(), target.float()
    channels = pred.shape[1]
    window = _gaussian_window().to(pred.device).expand(channels, 1, 11, 11).contiguous()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    mu_p, mu_t = blur(pred), blur(target)
    var_p = blur(pred * pred) - mu_p**2
    var_t = blur(target * target) - mu_t**2
    cov = blur(pred * target) - mu_p * mu_t
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return ssim_map.flatten(1).mean(1)


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


def require_dir(path: str | os.PathLike, what: str, key: str | None = None) -> Path:
    """Stop with a plain message when a stage's input folder is missing."""
    path = Path(path)
    if not path.is_dir():
        where = f" (config key '{key}')" if key else ""
        raise InputError(f"{what} not found: {path}{where}")
    return path


# --------------------------------------------------------------------------------------------
# Command-line entry
# --------------------------------------------------------------------------------------------
def run_cli(main: Callable[..., Any], argv: Sequence[str] | None = None) -> int:
    """Run a stage's `main`; the project's errors become one line on stderr and exit code 2.

    Library code raises `errors.MakeupError` subclasses (a notebook catches them); only the scripts'
    `if __name__ == "__main__"` goes through here. Other exceptions keep their traceback (a bug).
    """
    try:
        main(argv)
    except MakeupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0

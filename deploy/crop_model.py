"""TinyBeauty on batches of uint8 RGB face crops, in ONNX Runtime (a .onnx export, or a .pt exported on the fly)
or in PyTorch: what the video pipeline and its bench run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from deploy.makeup import blend, load_model, makeup_image
from deploy.onnx_export import INTENSITY, export_onnx, ort_session
from deploy.regions import RegionIntensity, RegionParser, parse_intensity
from errors import ConfigError, ModelError


class MakeupModel:
    """TinyBeauty on (N, S, S, 3) uint8 RGB crops -> the same with makeup at `intensity` (0 to 1.5).

    A .onnx file (tinybeauty_export.py's fp32 or int8) runs in ONNX Runtime. A .pt checkpoint is exported to
    ONNX first (into a temporary folder) unless `engine` is "torch". The output is photo mode's:
    clamp(face + intensity x (model(face) - face)), rounded to uint8 as common.to_uint8 does.
    `intensity` may also give each region its own (deploy.regions.parse_intensity: "lips=1.2,eyes=0.6,skin=0"
    or a mapping): then each crop is parsed and the intensity is a per-pixel map (`levels`; `intensity` is 1).
    """

    def __init__(
        self,
        path: str | Path,
        engine: str = "onnxruntime",
        threads: int = 1,
        intensity: float | str | dict | RegionIntensity | None = 1.0,
    ):
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model not found: {path}")
        if engine not in ("onnxruntime", "torch"):
            raise ConfigError(f"config key 'engine' must be onnxruntime or torch, not '{engine}'")
        self.levels = parse_intensity(intensity)
        # The scalar the graph (or the blend here) applies: the single intensity, or 1 under a per-region map.
        self.intensity = self.levels.uniform if self.levels.uniform is not None else 1.0
        self.path, self.engine = path, engine
        self.regions: RegionParser | None = None  # made on the first face that needs it (mediapipe loads slowly)
        self.threads = int(threads)
        if path.suffix == ".onnx":
            if engine == "torch":
                raise ConfigError(f"{path} is an ONNX file: engine=torch needs a .pt checkpoint")
            self._onnx(path)
        elif engine == "onnxruntime":
            with tempfile.TemporaryDirectory() as tmp:  # ONNX Runtime reads the file once, at session start
                self._onnx(self._export(path, Path(tmp)))
        else:
            self._torch(path)

    def _export(self, checkpoint: Path, folder: Path) -> Path:
        model, size = load_model(checkpoint, torch.device("cpu"))
        return export_onnx(model, folder / "tinybeauty_fp32.onnx", size)

    def _onnx(self, path: Path) -> None:
        self.session = ort_session(path, self.threads)
        self.size = int(self.session.get_inputs()[0].shape[-1])
        names = {i.name for i in self.session.get_inputs()} | {
            i.name for i in self.session.get_overridable_initializers()
        }
        self._feed = {INTENSITY: np.array(self.intensity, np.float32)} if INTENSITY in names else {}
        self._blend_here = not self._feed and self.intensity != 1.0  # an export without the intensity input

    def _torch(self, path: Path) -> None:
        torch.set_num_threads(self.threads)
        self.model, self.size = load_model(path, torch.device("cpu"))
        self.session = None

    def output(self, source: np.ndarray) -> np.ndarray:
        """The model's own output at intensity 1, clamp(source + residual), for (N, 3, S, S) float32 in [-1, 1]:
        what deploy.makeup.makeup_image runs (it applies the intensity itself, at the photo's size)."""
        if self.session is not None:
            return self.session.run(None, {"source": np.ascontiguousarray(source, np.float32)})[0]
        with torch.no_grad():
            return self.model(torch.from_numpy(source).float()).float().numpy()

    def makeup(self, face: np.ndarray, intensity: float | None = None) -> np.ndarray:
        """An (H, W, 3) uint8 face of any size with makeup, as photo mode makes it (deploy.makeup.makeup_image:
        the model at its size, its change resized to the face's); `intensity` None: this model's (per region:
        the face parsed)."""

        def run(small: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.output(small.numpy()))

        if intensity is not None or self.levels.uniform is not None:
            return makeup_image(run, face, self.size, self.intensity if intensity is None else intensity)
        return makeup_image(run, face, self.size, 1.0, self.intensity_map(face))

    def intensity_map(self, face: np.ndarray) -> np.ndarray:
        """(S, S) float32 per-pixel intensity of an RGB face crop from its regions (deploy.regions)."""
        if self.regions is None:
            self.regions = RegionParser()
        return self.regions.intensity_map(face, self.levels, self.size)

    def close(self) -> None:
        if self.regions is not None:
            self.regions.close()
            self.regions = None

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        source = crops.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - 1  # (N, 3, S, S) in [-1, 1]

        if self.session is not None:
            makeup = self.session.run(None, {"source": source, **self._feed})[0]
            if self._blend_here:  # an export without the intensity input: photo mode's blend
                makeup = blend(torch.from_numpy(source), torch.from_numpy(makeup), self.intensity).numpy()
        else:
            with torch.no_grad():
                x = torch.from_numpy(source)
                makeup = blend(x, self.model(x).float(), self.intensity).numpy()
        if self.levels.uniform is None:  # per region: the output at 1 above, the map of each crop's regions here
            maps = torch.from_numpy(np.stack([self.intensity_map(crop) for crop in crops]))[:, None]  # (N, 1, S, S)
            makeup = blend(torch.from_numpy(source), torch.from_numpy(makeup), maps).numpy()
        made = np.rint((np.clip(makeup, -1, 1) + 1) * np.float32(127.5)).astype(np.uint8)  # as common.to_uint8
        return np.ascontiguousarray(made.transpose(0, 2, 3, 1))

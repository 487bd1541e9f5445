"""Makeup on video frames: track each face, run TinyBeauty on its crop, filter the change over time, paste it back.

`VideoMakeup` does one frame in two steps that may run in different threads (`track`, then `apply`);
`process_video` runs a whole file through it with decoding, tracking, the model with its paste-back and
encoding in four threads (data/video_io.py). `tinybeauty_video.py` is the command.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from data.face_align import feather_mask
from data.face_tracking import FaceCrop, FaceTracker, ResidualFilter, paste_change
from data.video_io import FrameReader, FrameWriter, Stage, VideoReadError, open_video
from deploy.crop_model import MakeupModel
from errors import ConfigError


def residual_settings(cfg: DictConfig) -> DictConfig | None:
    """cfg.smoothing.residual when the residual filter is on (ConfigError, naming the key, for a bad value)."""
    residual = cfg.smoothing.residual
    if not (cfg.smoothing.enabled and residual.enabled):
        return None
    for key, low in (("min_cutoff", 0.0), ("beta", None), ("gate", None), ("motion_cutoff", None)):
        value = residual.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or value == low:
            need = "> 0" if low is not None else ">= 0"
            raise ConfigError(f"config key 'smoothing.residual.{key}' must be a number {need}, not {value!r}")
    return residual


class VideoMakeup:
    """BGR frames in, the same frames with makeup on their faces (changed in place), in two steps that may run
    in different threads, one frame apart: `track(frame)` (in frame order) and `apply(frame, faces)` (in frame
    order too: the residual filter keeps each face's last residual). Each step's time is summed in `seconds`."""

    def __init__(self, model: MakeupModel, cfg: DictConfig, fps: float):
        self.model, self.fps = model, float(fps)
        self.tracker = FaceTracker(cfg, fps, model.size)
        self.feather = feather_mask(model.size, cfg.face.feather)
        self.residual_cfg = residual_settings(cfg)
        self.filters: dict[int, ResidualFilter] = {}  # by track number: a new face starts afresh
        self.pasted: list[np.ndarray] = []  # the residuals pasted into the last frame (crop, float32), for the bench
        self.seconds = {"track": 0.0, "model": 0.0, "paste": 0.0}

    def __call__(self, frame: np.ndarray) -> int:
        """Number of faces made up in `frame`; 0 leaves it untouched."""
        faces = self.track(frame)
        self.apply(frame, faces)
        return len(faces)

    def track(self, frame: np.ndarray) -> list[FaceCrop]:
        start = time.perf_counter()
        faces = self.tracker.update(frame)
        self.seconds["track"] += time.perf_counter() - start
        return faces

    def apply(self, frame: np.ndarray, faces: list[FaceCrop]) -> np.ndarray:
        self.filters = {face.key: self.filters.get(face.key) or self._new_filter() for face in faces}
        self.pasted = []
        if not faces:
            return frame
        start = time.perf_counter()
        crops = np.stack([self.tracker.aligner.crop_with_matrix(f.matrix, frame) for f in faces])  # (N, S, S, 3)
        made = self.model(crops[..., ::-1])[..., ::-1]  # the model takes and gives RGB
        modelled = time.perf_counter()
        self.seconds["model"] += modelled - start
        for face, crop, new in zip(faces, crops, made):
            residual = new.astype(np.float32) - crop.astype(np.float32)  # (S, S, 3) the makeup's change, BGR
            residual_filter = self.filters[face.key]
            if residual_filter is not None:
                residual = residual_filter(residual, face.matrix)
            self.pasted.append(residual)
            paste_change(frame, face.matrix, residual, self.feather)
        self.seconds["paste"] += time.perf_counter() - modelled
        return frame

    def _new_filter(self) -> ResidualFilter | None:
        cfg = self.residual_cfg
        if cfg is None:
            return None
        return ResidualFilter(self.fps, cfg.min_cutoff, cfg.beta, cfg.gate, cfg.motion_cutoff)

    def close(self) -> None:
        self.tracker.close()


def process_video(model: MakeupModel, source: Path, output: Path, cfg: DictConfig) -> dict:
    """Every frame of `source` through VideoMakeup into `output`; the summary. VideoReadError when the input
    cannot be read, or breaks off (then with the summary of the valid partial output)."""
    capture, info, first = open_video(source)
    try:
        writer = FrameWriter(output, info, cfg.codec)
    except Exception:
        capture.release()
        raise
    reader, makeup = FrameReader(capture, first), VideoMakeup(model, cfg, info.fps)
    # Tracking runs here, in frame order; the model and the paste-back of a frame run in a stage of their own
    # while the next frame is tracked, and the encoder in another.
    painter = Stage(lambda job: makeup.apply(*job), then=writer.write)
    frames = frames_with_face = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        for frame in tqdm(reader, total=info.frames or None, unit="frame", desc=source.name, disable=None):
            matrices = makeup.track(frame)
            painter.put((frame, matrices))
            frames_with_face += bool(matrices)
            frames += 1
        painter.close()
    except BaseException:
        try:
            painter.close()  # let the frames in flight finish before the writer goes
        except BaseException:
            pass
        writer.abort()
        raise
    finally:
        reader.close()
        makeup.close()
    audio = writer.close(source)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    # The container's count can be an estimate (from the duration) for some formats: a frame short is not a break.
    broken = reader.error is not None or (info.frames > 0 and frames < info.frames - max(1, info.frames // 100))
    summary = {
        "input": str(source),
        "output": str(output),
        "model": str(model.path),
        "engine": model.engine,
        "intensity": model.levels.summary(),
        **(model.regions.counts() if model.regions is not None else {}),
        "frames": frames,
        "frames_in_container": info.frames,
        "complete": not broken,
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "codec": writer.codec,
        "audio": audio,
        "frames_with_face": int(frames_with_face),
        **makeup.tracker.counts,
        "seconds": round(seconds, 3),
        "fps_end_to_end": round(frames / seconds, 2),
        # CPU time of every thread of the process (MediaPipe's and the codecs' included) for a frame: with the
        # machine to itself, 2 cores could do at most 2000 / this many frames a second
        "cpu_ms_per_frame": round(1000 * cpu_seconds / frames, 2),
        "ms_per_frame": {
            part: round(1000 * value / frames, 3)
            for part, value in {"decode": reader.seconds, **makeup.seconds, "encode": writer.seconds}.items()
        },
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if broken:
        reason = f": {reader.error}" if reader.error is not None else ""
        raise VideoReadError(
            f"{source} breaks off after frame {frames} of the {info.frames} its container lists (truncated or "
            f"corrupt{reason}). The {frames} frames processed up to there are in {output}, a valid video.",
            summary,
        )
    return summary

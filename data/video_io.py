"""Video in and out on threads: a decoding reader, a pipeline stage, an encoding writer, and the audio copy.

OpenCV reads and writes video only: with `ffmpeg` on the PATH the input's audio is copied into the output
(stream copy), otherwise it is dropped and `copy_audio` says so. The writer writes to a temporary file and
renames it at the end, so a run that stops leaves either a valid partial video or nothing.
"""

from __future__ import annotations

import math
import os
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common import log
from errors import ConfigError, InputError

CODECS = {".mp4": "mp4v", ".mov": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}


class VideoReadError(InputError):
    """A video that cannot be read to its end. `summary` describes the frames written before it broke
    (None when nothing was written)."""

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary


@dataclass
class VideoInfo:
    path: Path
    fps: float
    width: int
    height: int
    frames: int  # what the container says; 0 when it does not


def open_video(path: Path) -> tuple[cv2.VideoCapture, VideoInfo, np.ndarray]:
    """The capture, what it holds, and its first frame (BGR); VideoReadError when it cannot be read at all."""
    if not path.is_file():
        raise VideoReadError(f"video not found: {path}")
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        capture.release()
        raise VideoReadError(
            f"cannot read video {path}: OpenCV (FFmpeg) cannot decode a frame of it. It is not a video, or it is "
            "cut short before its index (an MP4 keeps it at its end unless written with faststart); nothing was written"
        )
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not (math.isfinite(fps) and fps > 0):
        log.warning("%s does not give its frame rate: writing at 30 fps", path)
        fps = 30.0
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    return capture, VideoInfo(path, fps, first.shape[1], first.shape[0], max(frames, 0)), first


class FrameReader:
    """Decodes in a thread of its own (OpenCV releases the GIL), a few frames ahead of the caller."""

    def __init__(self, capture: cv2.VideoCapture, first: np.ndarray, ahead: int = 8):
        self.capture, self.seconds, self.error = capture, 0.0, None
        self._queue: queue.Queue = queue.Queue(ahead)
        self._stop = threading.Event()
        self._queue.put(first)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                start = time.perf_counter()
                ok, frame = self.capture.read()
                self.seconds += time.perf_counter() - start
                if not ok:
                    break
                self._queue.put(frame)
        except Exception as err:  # cv2.error on a broken stream: reported as the video's end
            self.error = err
        finally:
            self._queue.put(None)

    def __iter__(self):
        while (frame := self._queue.get()) is not None:
            yield frame

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a pending put
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self.capture.release()


class Stage:
    """`work(item)` on each item put, in order, in a thread of its own (OpenCV, ONNX Runtime and MediaPipe
    release the GIL, so stages overlap on the cores); its result goes on to `then` when there is one."""

    _END = object()

    def __init__(self, work, then=None, ahead: int = 4):
        self.work, self.then, self.error = work, then, None
        self._queue: queue.Queue = queue.Queue(ahead)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._END:
            if self.error is not None:
                continue  # keep draining, so that put() never blocks
            try:
                result = self.work(item)
                if self.then is not None:
                    self.then(result)
            except BaseException as err:
                self.error = err

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(item)

    def close(self) -> None:
        """Wait until every item put so far is done; raises the first error one of them gave."""
        if self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()
        if self.error is not None:
            raise self.error


class FrameWriter:
    """Encodes in a thread of its own into a hidden file beside `path`; `close()` gives it its name (after
    copying the audio in, when ffmpeg is there), `abort()` deletes it."""

    def __init__(self, path: Path, info: VideoInfo, codec: str = "auto"):
        fourcc = CODECS.get(path.suffix.lower()) if codec == "auto" else codec
        if fourcc is None:
            raise ConfigError(f"no codec known for '{path.suffix}' ({', '.join(CODECS)}): set codec=FOURCC")
        if info.width % 2 or info.height % 2:
            log.warning("the frames are %dx%d: OpenCV's writer drops an odd last row or column, the output is "
                        "%dx%d", info.width, info.height, info.width // 2 * 2, info.height // 2 * 2)  # fmt: skip
        self.path, self.codec, self.seconds, self.frames = path, fourcc, 0.0, 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = path.with_name(f".{path.stem}.partial{path.suffix}")
        self.writer = cv2.VideoWriter(str(self.partial), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), info.fps,
                                      (info.width, info.height))  # fmt: skip
        if not self.writer.isOpened():
            raise ConfigError(f"OpenCV cannot write {fourcc} video to {path}: pick another suffix or codec=FOURCC")
        self._stage = Stage(self._encode, ahead=8)

    def _encode(self, frame: np.ndarray) -> None:
        start = time.perf_counter()
        self.writer.write(frame)
        self.seconds += time.perf_counter() - start
        self.frames += 1

    def write(self, frame: np.ndarray) -> None:
        self._stage.put(frame)

    def close(self, source: Path) -> str:
        """Finish the file (a valid video with every frame written so far); returns what happened to the audio."""
        try:
            self._stage.close()
        except Exception as err:
            self.abort()
            raise OSError(f"writing {self.path} failed: {err}") from err
        self.writer.release()
        audio = copy_audio(source, self.partial, self.path)
        if self.partial.exists():
            os.replace(self.partial, self.path)
        return audio

    def abort(self) -> None:
        try:
            self._stage.close()
        except Exception:
            pass
        self.writer.release()
        self.partial.unlink(missing_ok=True)


def copy_audio(source: Path, video: Path, output: Path) -> str:
    """The video stream of `video` with the audio of `source` into `output` (ffmpeg, stream copy, no re-encode).
    Returns what happened, for the log; without ffmpeg, or when it fails, `video` is left for the caller."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return "not kept: OpenCV writes video only and ffmpeg is not installed (with ffmpeg on the PATH it is copied)"
    muxed = video.with_name(f".{output.stem}.audio{output.suffix}")
    command = [ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(video), "-i", str(source), "-map", "0:v:0",
               "-map", "1:a?", "-c", "copy", "-shortest", str(muxed)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        muxed.unlink(missing_ok=True)
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        return f"not kept: ffmpeg could not copy it into {output.suffix} ({reason})"
    os.replace(muxed, output)
    video.unlink(missing_ok=True)
    return "copied from the input by ffmpeg (when it has any)"

"""Makeup on a video: track each face, smooth its crop over time, run TinyBeauty, paste its change back.

    python tinybeauty_video.py --model export/tinybeauty_fp32.onnx --input clip.mp4 --output clip_makeup.mp4
    python tinybeauty_video.py --model tinybeauty_model/tinybeauty_best_psnr.pt --input clip.mp4 --output out.mp4
    python tinybeauty_video.py --model M --input clip.mp4 --output out.mkv intensity=0.7 smoothing.enabled=false
    python tinybeauty_video.py --model M --input clip.mp4 --output out.mp4 smoothing.residual.enabled=false
    python tinybeauty_video.py --model M --input clip.mp4 --output out.mp4 intensity=lips=1.2,eyes=0.6,skin=0
    python tinybeauty_video.py --style smoky_eye --input clip.mp4 --output out.mp4    # a shipped style, no training
    python tinybeauty_video.py --list-styles

The output has the input's frame rate, size and number of frames. Its codec follows its suffix (.mp4 and
.mov: mp4v, .avi: MJPG, .mkv: lossless FFV1; `codec=` picks another FourCC). OpenCV reads and writes
video only: when `ffmpeg` is on the PATH the input's audio is copied into the output, otherwise it is
dropped and the log says so. configs/video.yaml holds every parameter. Per frame:
1. Faces are found with photo mode's detector and framing (data.face_align.FaceAligner, the crops the
   model was trained on) while none is tracked, and every `tracking.redetect_every` frames.
2. A tracked face is followed by MediaPipe FaceMesh in video mode on its crop: a similarity fit of rigid
   landmarks (eye corners, nose, upper face outline; not lips or jaw, which move when speaking) onto where
   they sat in the face's first crop gives the crop transform. The landmark model is skipped while the
   crop's image has not changed, and runs at least every `tracking.landmarks_max_gap` frames.
3. A One-Euro filter (Casiez et al., CHI 2012) smooths the transform's centre, scale and angle: hard
   while the face is still (no jitter), hardly when it moves fast (no lag).
4. TinyBeauty (ONNX Runtime by default; a .pt checkpoint is exported to ONNX first, `engine=torch` runs
   it in PyTorch) on the aligned crop. Its change, the clamped output minus the crop as in photo mode, is
   low-passed over time in crop coordinates (ResidualFilter: the previous change carried along with the
   face and blended with this one, strongly for a still face, hardly for a fast one or where the change
   is large; a new face starts from its raw change), then warped back into the frame and added under a
   feathered edge: FaceAligner.paste_back's residual method, with the feather applied before the warp
   (one warp instead of two; within a grey level). `smoothing.enabled=false` turns off both smoothings.
Frames without a face are written as decoded. Decoding, tracking, the model with its paste-back and
encoding run in four threads, each a frame or more ahead of the next (OpenCV, MediaPipe and ONNX
Runtime let go of the GIL). An unreadable video stops with a message naming the file; a truncated or
corrupt one stops where it breaks, and the message says that the frames processed so far are in the
output, a valid video (exit status 2, as for every input error). The model runs with one thread by
default: two compete with the pipeline's own. `--style NAME` runs a shipped style's fp32 ONNX
(weights/styles/NAME/, deploy/styles.py; `--precision int8` for the other) instead of `--model`.
`intensity` per region (`intensity=lips=1.2,eyes=0.6,skin=0`, or a mapping in the YAML) parses each crop in the
model's stage (data/face_parsing.py; 12-37 ms a face on one core) and scales the change by a feathered per-pixel map
(deploy/regions.py), before the residual filter; one value for all regions parses nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import DictConfig

from common import atomic_write_text, load_config, log, run_cli, setup_logging
from data.video_io import VideoReadError
from deploy.crop_model import MakeupModel
from deploy.regions import parse_intensity
from deploy.styles import add_style_arguments, describe_styles, get_style
from deploy.video import process_video, residual_settings
from errors import ConfigError, InputError

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "video.yaml"


def log_summary(summary: dict) -> None:
    parts = ", ".join(f"{part} {ms:.1f}" for part, ms in summary["ms_per_frame"].items())
    log.info("%d frames (%dx%d at %.3f fps) in %.1f s: %.1f fps end to end (ms per frame: %s, each in its own "
             "thread, overlapping; CPU %.1f ms per frame)", summary["frames"], summary["width"], summary["height"],
             summary["fps"], summary["seconds"], summary["fps_end_to_end"], parts, summary["cpu_ms_per_frame"])  # fmt: skip
    log.info("a face in %d of %d frames (%d face(s) found; detector run %d times, landmark model %d times)",
             summary["frames_with_face"], summary["frames"], summary["faces_found"], summary["detections"],
             summary["landmark_runs"])  # fmt: skip
    log.info("audio %s", summary["audio"])
    log.info("written: %s (%s)", summary["output"], summary["codec"])


def run(model_path: str | Path, source: str | Path, output: str | Path, cfg: DictConfig) -> dict:
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve():
        raise InputError(f"the output would overwrite the input: {output}")
    residual_settings(cfg)  # a bad filter setting stops here, before any output is made
    try:
        levels = parse_intensity(cfg.intensity, "config key 'intensity'")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    model = MakeupModel(model_path, cfg.engine, cfg.threads, levels)
    log.info("model %s (%s, %d thread(s), intensity %s); %s -> %s", model_path, model.engine, model.threads,
             levels, source, output)  # fmt: skip
    try:
        summary = process_video(model, source, output, cfg)
    finally:
        model.close()
    log_summary(summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.strip().splitlines()[0],
        epilog="Overrides: any key of configs/video.yaml as key=value, e.g. intensity=0.7 smoothing.enabled=false",
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", help="tinybeauty_{fp32,int8}.onnx or a tinybeauty_*.pt checkpoint")
    add_style_arguments(model, parser)
    parser.add_argument("--input", help="a video file")
    parser.add_argument("--output", help="the video to write (.mp4, .mov, .avi, .mkv)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    parser.add_argument("--summary", default=None, metavar="JSON", help="also write the run's summary here")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args(argv)
    if args.list_styles:
        print(describe_styles())
        return {}
    if not (args.model or args.style):
        parser.error("one of --model or --style is needed (--list-styles shows the shipped styles)")
    if not (args.input and args.output):
        parser.error("--input and --output are needed")
    setup_logging()
    cfg = load_config(DEFAULT_CONFIG, args.overrides, args.config)
    model_path = get_style(args.style).model(args.precision) if args.style else args.model
    try:
        summary = run(model_path, args.input, args.output, cfg)
    except VideoReadError as err:
        if err.summary is not None:  # a partial output was written: say what is in it
            log_summary(err.summary)
            if args.summary:
                atomic_write_text(args.summary, json.dumps(err.summary, indent=1))
        raise
    if args.summary:
        atomic_write_text(args.summary, json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

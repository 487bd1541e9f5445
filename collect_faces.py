"""Turn any folder of photos into plain faces for stage 3: found, aligned, filtered, deduplicated.

    python collect_faces.py --input photos/ --output my_faces/
    python collect_faces.py --input /data/ffhq/images1024x1024 --output /data/ffhq_faces   # subfolders too
    python collect_faces.py ... (the same command again)      # after a kill: goes on where it stopped
    python make_style.py --template configs/makeup/classic_red_lip.yaml --faces my_faces/ --out runs/my_style
    python dda_amplify.py input_dir=my_faces/ ...             # stage 3 reads the folder as it is

Every image under --input (subfolders included) goes through MediaPipe's face detector and is aligned as the
seed pairs and stage 3 align faces (data/face_align.py: the eye line level, the detector box grown by
--margin 0.4 on every side), then each face is kept or rejected with a reason:
  not_an_image, corrupt   the file does not read as an image (data/io.py's ImageReadError)
  no_face                 the detector finds none
  several_faces           a group photo, with --group reject (default keep: each face is judged on its own)
  too_small               the face's detector box is under --min-face pixels in the photo
  blurry                  variance of the Laplacian on the aligned face under --min-sharpness
  no_landmarks            FaceMesh finds no face in the aligned crop (stage 3 would skip it too)
  turned                  |yaw| over --max-yaw, |pitch| over --max-pitch or |roll| over --max-roll (FaceMesh)
  duplicate               its perceptual hash is within --max-hash-distance bits of a face already kept
Kept faces are written as OUT/NAME.png (--size x --size, default 256: what stage 3 aligns and parses at),
directly in OUT, so OUT is what make_style.py --faces and dda_amplify.py input_dir= take. Beside them:
collect_manifest.jsonl (one line per photo or face, kept or not, with the reason and the measures, written as it
goes: a rerun skips every photo it holds), collect_settings.json (a rerun with other filters stops and says
which differ) and, at the end, summary.json. --save-rejected writes the rejected faces' crops to
OUT/rejected/REASON/ to check the thresholds. A folder that gives no usable face is an error (exit status 2)
and leaves nothing behind. The defaults were measured: docs/decisions.md (collect_faces).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import atomic_save_image, atomic_write_text, require_dir, run_cli
from data.face_align import AlignedFace, FaceAligner
from data.face_crops import SkipInput, read_photo
from data.face_parsing import FaceParser
from data.face_quality import hamming, hash_array, head_pose, perceptual_hash, sharpness
from data.io import IMAGE_SUFFIXES
from errors import InputError

MANIFEST, SETTINGS, SUMMARY = "collect_manifest.jsonl", "collect_settings.json", "summary.json"
# The filters: a rerun on the same --output must use the same ones (why each default: docs/decisions.md).
FILTERS = ("size", "margin", "group", "min_face", "min_sharpness", "max_yaw", "max_pitch", "max_roll",
           "max_hash_distance")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--input", required=True, metavar="DIR", help="a folder of photos (subfolders too)")
    parser.add_argument("--output", required=True, metavar="DIR", help="where the faces go (OUT/NAME.png)")
    parser.add_argument("--size", type=int, default=256, help="crop side in pixels (default: 256, stage 3's)")
    parser.add_argument("--margin", type=float, default=0.4, help="context around the face box (default: 0.4)")
    parser.add_argument("--group", choices=("keep", "reject"), default="keep",
                        help="group photos: keep each face that passes, or reject the photo (default: keep)")  # fmt: skip
    parser.add_argument("--min-face", type=int, default=96, help="smallest face box side in the photo, pixels (96)")
    parser.add_argument("--min-sharpness", type=float, default=40.0, help="variance of the Laplacian (default: 40)")
    parser.add_argument("--max-yaw", type=float, default=25.0, help="degrees, FaceMesh's (default: 25)")
    parser.add_argument("--max-pitch", type=float, default=25.0, help="degrees, FaceMesh's (default: 25)")
    parser.add_argument("--max-roll", type=float, default=10.0, help="eye line tilt left in the crop (default: 10)")
    parser.add_argument("--max-hash-distance", type=int, default=12, help="duplicate within this many of 143 bits")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos by path")
    parser.add_argument("--save-rejected", action="store_true", help="write rejected crops to OUT/rejected/REASON/")
    args = parser.parse_args(argv)
    if args.size < 64 or args.min_face < 1 or not 0 <= args.max_hash_distance <= 143:
        parser.error("--size must be at least 64, --min-face at least 1, --max-hash-distance 0 to 143")
    return args


# --------------------------------------------------------------------------------------------
# The plan: which photos, under which names
# --------------------------------------------------------------------------------------------
@dataclass
class Photo:
    path: Path
    key: str  # path under --input (posix): the manifest's key
    name: str  # the face's file stem: the path under --input with "/" -> "__"


def plan_photos(input_dir: Path, output_dir: Path) -> list[Photo]:
    """Every image file under `input_dir` (hidden ones and `output_dir` left out), sorted by path."""
    output_dir = output_dir.resolve()
    paths = []
    for path in sorted(input_dir.rglob("*")):
        relative = path.relative_to(input_dir)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and output_dir not in path.resolve().parents:
            paths.append((path, relative))
    stems = Counter(relative.with_suffix("").as_posix() for _, relative in paths)
    photos = []
    for path, relative in paths:
        stem = relative.with_suffix("").as_posix()
        if stems[stem] > 1:  # face.jpg and face.png side by side: keep the suffix in both names
            stem = f"{stem}_{path.suffix.lstrip('.').lower()}"
        photos.append(Photo(path, relative.as_posix(), stem.replace("/", "__")))
    return photos


# --------------------------------------------------------------------------------------------
# Judging one photo
# --------------------------------------------------------------------------------------------
class Collector:
    """The detector, FaceMesh and the filters; `kept_hashes` grows as faces are kept."""

    def __init__(self, args: argparse.Namespace, kept: list[tuple[str, str]]):
        self.args = args
        self.aligner = FaceAligner(size=args.size, margin=args.margin)
        # stage 3's parser settings (FaceParser's default confidence): a face kept here parses there
        self.parser = FaceParser(max_num_faces=2)
        self.hashes = hash_array([h for h, _ in kept])
        self.hash_names = [name for _, name in kept]

    def judge(self, photo: Photo) -> tuple[list[dict], list[np.ndarray | None]]:
        """One manifest record per face (one for the photo when it gives none), and each face's crop."""
        try:
            faces = self.aligner.detect(read_photo(photo.path))
        except SkipInput as err:
            return [self.record(photo, None, 0, err.reason, err.detail)], [None]
        if not faces:
            return [self.record(photo, None, 0, "no_face", "the detector found no face")], [None]
        if len(faces) > 1 and self.args.group == "reject":
            detail = f"{len(faces)} faces (--group reject)"
            return [self.record(photo, None, len(faces), "several_faces", detail)], [faces[0].crop]
        records = [self.judge_face(photo, face, index, len(faces)) for index, face in enumerate(faces)]
        return records, [face.crop for face in faces]

    def judge_face(self, photo: Photo, face: AlignedFace, index: int, count: int) -> dict:
        args, (x0, y0, x1, y1) = self.args, face.box
        measures = {"box": [x0, y0, x1, y1], "face_px": max(x1 - x0, y1 - y0), "tilt": round(face.angle, 1)}
        if measures["face_px"] < args.min_face:
            detail = f"{measures['face_px']} px < {args.min_face}"
            return self.record(photo, index, count, "too_small", detail, measures)
        measures["sharpness"] = round(sharpness(face.crop, args.margin), 1)
        if measures["sharpness"] < args.min_sharpness:
            detail = f"sharpness {measures['sharpness']} < {args.min_sharpness}"
            return self.record(photo, index, count, "blurry", detail, measures)
        marks = self.parser.landmarks(face.crop, depth=True)
        if not marks:
            return self.record(photo, index, count, "no_landmarks", "FaceMesh found no face in the crop", measures)
        yaw, pitch, roll = head_pose(marks[0])
        measures.update(yaw=round(yaw, 1), pitch=round(pitch, 1), roll=round(roll, 1))
        over = [f"{what} {value:.1f} (limit {limit:g})" for what, value, limit in
                (("yaw", yaw, args.max_yaw), ("pitch", pitch, args.max_pitch), ("roll", roll, args.max_roll))
                if abs(value) > limit]  # fmt: skip
        if over:
            return self.record(photo, index, count, "turned", ", ".join(over), measures)
        measures["hash"] = value = perceptual_hash(face.crop, marks[0])
        if len(self.hashes):
            distances = hamming(value, self.hashes)
            nearest = int(np.argmin(distances))
            if distances[nearest] <= args.max_hash_distance:
                detail = f"{distances[nearest]} bits from {self.hash_names[nearest]}"
                measures["duplicate_of"] = self.hash_names[nearest]
                return self.record(photo, index, count, "duplicate", detail, measures)
        output = face_file(photo, index, count)
        self.hashes = np.concatenate([self.hashes, hash_array([value])])
        self.hash_names.append(output)
        return self.record(photo, index, count, None, "", measures, output)

    @staticmethod
    def record(photo, index, count, reason, detail, measures=None, output=None) -> dict:
        return {"input": photo.key, "face": index, "faces": count, "kept": reason is None, "reason": reason,
                "detail": detail, "output": output, **(measures or {})}  # fmt: skip

    def close(self) -> None:
        self.aligner.close()
        self.parser.close()


def face_file(photo: Photo, index: int, count: int) -> str:
    return f"{photo.name}.png" if count == 1 else f"{photo.name}_f{index}.png"


# --------------------------------------------------------------------------------------------
# The output folder: settings, manifest (resume), summary, clean-up
# --------------------------------------------------------------------------------------------
def check_output(out: Path, settings: dict) -> None:
    """Refuse a folder of other images, or one collected with other filters."""
    path = out / SETTINGS
    if path.is_file():
        before = json.loads(path.read_text())
        differ = [key for key in settings if before.get(key) != settings[key]]
        if differ:
            changes = ", ".join(f"{key}: {before.get(key)!r} then, {settings[key]!r} now" for key in differ)
            raise InputError(f"{out} holds faces collected with other settings ({changes}): give the same ones to "
                             f"go on, or another --output")  # fmt: skip
    elif out.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in out.iterdir()):
        raise InputError(f"{out} already holds images that collect_faces.py did not write: give a new --output")


def load_manifest(out: Path) -> dict[str, list[dict]]:
    """Photo key -> its records, for the photos whose every line was written (a kill mid-photo redoes it)."""
    by_photo: dict[str, list[dict]] = {}
    path = out / MANIFEST
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # cut short by a kill
            by_photo.setdefault(record["input"], []).append(record)
    complete = {}
    for key, records in by_photo.items():
        records = list({r["face"]: r for r in records}.values())  # a photo redone after a kill: its last lines
        if len(records) == max(1, records[0]["faces"]) or records[0]["face"] is None:
            complete[key] = records
    return complete


def append_records(out: Path, records: list[dict]) -> None:
    with open(out / MANIFEST, "a") as manifest:
        manifest.write("".join(json.dumps(record) + "\n" for record in records))
        manifest.flush()
        os.fsync(manifest.fileno())


def remove_outputs(out: Path, created: bool) -> None:
    """What a run that kept no face wrote: nothing half-done is left (the folder too, if this run made it)."""
    for name in (MANIFEST, SETTINGS, SUMMARY):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "rejected", ignore_errors=True)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def reason_counts(records: list[dict]) -> dict[str, int]:
    counts = Counter(r["reason"] for r in records if not r["kept"])
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def summarise(args, records: list[dict], photos: int, new: list[dict], seconds: float, settings: dict) -> dict:
    """The whole folder's counts (every run), and this run's speed: photos and faces found per second."""
    kept = [r for r in records if r["kept"]]
    faces_seen, new_faces = (sum(1 for r in rs if r["face"] is not None) for rs in (records, new))
    new_photos = len({r["input"] for r in new})
    return {
        "stage": "collect_faces", "input": settings["input"], "output": str(Path(args.output).resolve()),
        "photos": photos, "faces_found": faces_seen, "kept": len(kept), "rejected": len(records) - len(kept),
        "rejected_by_reason": reason_counts(records), "this_run": {"photos": new_photos, "faces_found": new_faces,
        "seconds": round(seconds, 1), "photos_per_s": round(new_photos / max(seconds, 1e-9), 2),
        "faces_per_s": round(new_faces / max(seconds, 1e-9), 2)}, "settings": settings,
    }  # fmt: skip


def no_usable_face(input_dir: Path, records: list[dict]) -> InputError:
    examples = {}
    for record in records:
        examples.setdefault(record["reason"], f"{record['input']}: {record['detail']}")
    counts = ", ".join(f"{reason} {n} (e.g. {examples[reason]})" for reason, n in reason_counts(records).items())
    return InputError(f"no usable face in {input_dir}: {len(records)} rejected ({counts}); nothing was written")


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def collect(args: argparse.Namespace, photos: list[Photo], out: Path, done: dict[str, list[dict]]) -> list[str]:
    """Judge every photo not in the manifest; write kept faces (and lines) as it goes. Returns the photos judged."""
    kept = [(r["hash"], r["output"]) for records in done.values() for r in records if r["kept"]]
    pending = [photo for photo in photos if photo.key not in done]
    collector = Collector(args, kept)
    bar = tqdm(pending, desc="collecting faces", unit="photo", dynamic_ncols=True, disable=None)
    try:
        for photo in bar:
            records, crops = collector.judge(photo)
            out.mkdir(parents=True, exist_ok=True)
            for record, crop in zip(records, crops):
                if record["kept"]:
                    atomic_save_image(crop, out / record["output"])
                elif args.save_rejected and crop is not None:
                    name = face_file(photo, record["face"] or 0, max(1, record["faces"]))
                    atomic_save_image(crop, out / "rejected" / record["reason"] / name)
            append_records(out, records)  # after the faces: a line means its face is on disk
            done[photo.key] = records
            bar.set_postfix(kept=len(collector.hash_names))
    finally:
        bar.close()
        collector.close()
    return [photo.key for photo in pending]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    input_dir = require_dir(args.input, "photo folder").resolve()
    out = Path(args.output).resolve()
    if out == input_dir:
        raise InputError(f"--output must be another folder than --input ({input_dir})")
    photos = plan_photos(input_dir, out)[: args.limit]
    if not photos:
        raise InputError(f"no image files in {input_dir} or its subfolders ({', '.join(IMAGE_SUFFIXES)})")
    settings = {"input": str(input_dir), **{key: getattr(args, key) for key in FILTERS}}
    check_output(out, settings)
    created = not out.exists()
    done = load_manifest(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SETTINGS, json.dumps(settings, indent=1))
    start = time.perf_counter()
    try:
        judged = collect(args, photos, out, done)
    except BaseException:
        if not any(r["kept"] for records in done.values() for r in records):
            remove_outputs(out, created)  # killed before any face was kept: nothing to go on from
        raise
    records = [record for photo in photos for record in done.get(photo.key, [])]
    if not any(r["kept"] for r in records):
        remove_outputs(out, created)
        raise no_usable_face(input_dir, records)
    new = [record for key in judged for record in done[key]]
    summary = summarise(args, records, len(photos), new, time.perf_counter() - start, settings)
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=1))
    rejected = ", ".join(f"{reason} {n}" for reason, n in summary["rejected_by_reason"].items()) or "none"
    print(f"kept {summary['kept']} faces from {len(photos)} photos in {out}; rejected {summary['rejected']}: "
          f"{rejected} (details: {out / MANIFEST})")  # fmt: skip
    return summary


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

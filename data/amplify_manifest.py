"""Stage 3's plan and manifest: which pairs, under which names and seeds, and which are already made.

Every pair has its own seed (from the run's `seed`, the input's file name and the variant), and the
batches are cut from one global, sorted plan (process k takes batches k, k+N, ...), so a pair's bytes do
not depend on the process count or on being resumed. While running, each process appends one line per
pair to its own shard (`manifest.parts/rankNNN.jsonl`, flushed to disk after the pair's files); at the end
the shards are merged into `manifest.jsonl` in plan order. A rerun skips every pair whose files exist and
whose line says ok or skipped, and refuses an output folder made with other settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import atomic_write_text
from data.io import list_images
from errors import InputError

MANIFEST = "manifest.jsonl"


SHARD_DIR = "manifest.parts"  # one shard per process while running; merged into MANIFEST at the end


# Settings recorded per pair: a resumed run must not mix pairs made with other values into one set.
RECORDED_SETTINGS = (
    "amplifier",
    "seed",
    "strength",
    "num_steps",
    "scheduler",
    "guidance_scale",
    "region_weights",
    "style",
    "resolution",
    "eye_region",
)
LEGACY_SETTINGS = {
    "eye_region": "lid",
    "amplifier": "dda",
}  # what a manifest line written before the key existed was made with


@dataclass
class Job:
    index: int  # position in the global plan; batches are cut from this order
    input: Path
    input_name: str  # file name inside input_dir: the manifest key and the seed's source
    name: str  # output pair name
    variant: int
    seed: int


def pair_seed(seed: int, input_name: str, variant: int) -> int:
    """A pair's own seed: stable across machines and Python runs (unlike hash())."""
    digest = hashlib.sha256(f"{seed}/{input_name}/{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31)


def plan_jobs(input_dir: Path, num_images: int | None, variants: int, seed: int) -> list[Job]:
    """The first `num_images` image files by name (all when -1/None), `variants` pairs each."""
    files = list_images(input_dir)
    if num_images is not None and num_images >= 0:
        files = files[:num_images]
    stems = Counter(p.stem for p in files)
    jobs = []
    for path in files:
        # face.jpg and face.png in one folder would collide on NAME: keep the suffix in both names.
        base = path.stem if stems[path.stem] == 1 else f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        for variant in range(variants):
            name = base if variants == 1 else f"{base}_v{variant:02d}"
            jobs.append(Job(len(jobs), path, path.name, name, variant, pair_seed(seed, path.name, variant)))
    return jobs


def job_key(input_name: str, variant: int) -> str:
    return f"{input_name}#{variant}"


def my_batches(jobs: Sequence[Job], batch_size: int, process_index: int, num_processes: int) -> list[list[Job]]:
    """Fixed batches of the global plan, dealt round robin: the same batches whatever the process count."""
    batches = [list(jobs[i : i + batch_size]) for i in range(0, len(jobs), batch_size)]
    return batches[process_index::num_processes]


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: its pair is simply made again
    return records


def load_manifest(out_dir: Path) -> dict[str, dict]:
    """Every recorded pair by key (merged manifest first, then shards; later lines win)."""
    records: dict[str, dict] = {}
    shard_paths = sorted((out_dir / SHARD_DIR).glob("*.jsonl")) if (out_dir / SHARD_DIR).is_dir() else []
    for path in [out_dir / MANIFEST, *shard_paths]:
        for record in _read_jsonl(path):
            records[job_key(record["input"], record["variant"])] = record
    return records


def pair_files(out_dir: Path, name: str) -> list[Path]:
    return [out_dir / sub / f"{name}.png" for sub in ("source", "target", "mask")]


def is_done(record: dict | None, out_dir: Path) -> bool:
    if record is None:
        return False
    if record["status"] == "skipped":
        return True
    return record["status"] == "ok" and all(p.is_file() for p in pair_files(out_dir, record["name"]))


class ShardWriter:
    """Appends manifest lines for one process; each line is flushed to disk after its pair's files."""

    def __init__(self, out_dir: Path, process_index: int):
        path = out_dir / SHARD_DIR / f"rank{process_index:03d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a")  # noqa: SIM115 (closed in close())
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            self.file.write("\n")  # a line cut short by a kill stays on its own (unparseable) line

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def merge_manifest(out_dir: Path, jobs: Sequence[Job]) -> list[dict]:
    """manifest.jsonl in plan order (pairs from earlier, larger plans after), then the shards removed."""
    records = load_manifest(out_dir)
    order = {job_key(j.input_name, j.variant): j.index for j in jobs}
    merged = sorted(records.values(), key=lambda r: (order.get(job_key(r["input"], r["variant"]), math.inf), r["name"]))
    atomic_write_text(out_dir / MANIFEST, "".join(json.dumps(r) + "\n" for r in merged))
    shard_dir = out_dir / SHARD_DIR
    if shard_dir.is_dir():
        for path in shard_dir.glob("*.jsonl"):
            path.unlink()
        shard_dir.rmdir()
    return merged


def check_settings(records: dict[str, dict], jobs: Sequence[Job], settings: dict, out_dir: Path) -> None:
    """Stop before mixing pairs made with other settings into the same output folder."""
    for job in jobs:
        record = records.get(job_key(job.input_name, job.variant))
        if record is None or record["status"] != "ok":
            continue
        wanted = dict(settings, seed=job.seed)
        for key in RECORDED_SETTINGS:
            made_with = record.get(key, LEGACY_SETTINGS.get(key))
            if made_with != wanted.get(key, LEGACY_SETTINGS.get(key)):
                raise InputError(
                    f"{out_dir} holds pairs made with {key}={made_with!r} (e.g. {record['name']}), "
                    f"not {wanted.get(key, LEGACY_SETTINGS.get(key))!r}: use a new output_dir or the same settings to resume"
                )

"""Stage 3 (dda_amplify.py): plan, seeds, resume, process split, bad files, region weights, output format.

The machinery is tested with a fake DDA, aligner and parser (same call signatures as the real ones,
fast and exact), so that these tests hold whatever the models do; the tests at the end run the real
script with the tiny SD DDA and the real face tools.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dda_amplify as amp
from common import from_uint8, load_config, to_uint8
from data import amplify_manifest, face_crops
from data.io import read_labels, read_rgb
from data.paired import PairedDataset, scan_pairs
from errors import MakeupError
from models.dda_io import Amplifier
from tests.conftest import REPO, SHARED_DATA

RES = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_thread_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------
# Fakes with the real signatures
# --------------------------------------------------------------------------------------------
class FakeDDA:
    """img2img that changes each makeup region by its weight, with noise from the caller's generators.

    `leak` also nudges the background, as an fp16 VAE round trip might: the stage must undo that.
    """

    resolution = RES

    def __init__(self, shift: float = 0.0, leak: float = 0.0, delay: float = 0.0):
        self.shift, self.leak, self.delay, self.calls = shift, leak, delay, []

    def sampling_settings(self, strength=None, num_steps=None, scheduler=None) -> dict:
        """As DDA.sampling_settings: unset values are the trained ones (here the official 0.3, 10, ddim)."""
        return {
            "strength": 0.3 if strength is None else float(strength),
            "num_steps": 10 if num_steps is None else int(num_steps),
            "scheduler": "ddim" if scheduler is None else str(scheduler),
        }

    def img2img(
        self,
        source,
        makeup_mask,
        *,
        region_weights=None,
        strength=0.3,
        num_steps=10,
        scheduler="ddim",
        guidance_scale=1.0,
        generator=None,
    ):
        region_weights = dict(region_weights or {})
        self.calls.append(dict(batch=source.shape[0], region_weights=region_weights, strength=strength))
        time.sleep(self.delay)
        generators = generator if isinstance(generator, list) else [generator] * source.shape[0]
        noise = torch.stack([torch.randn(source.shape[1:], generator=g) for g in generators])  # (B, 3, H, W)
        weight = torch.zeros_like(makeup_mask, dtype=source.dtype)
        for label, region in enumerate(amp.REGIONS, start=1):
            weight[makeup_mask == label] = float(region_weights.get(region, 1.0))  # 1.0: 'learned'
        change = strength * (0.5 * noise - 0.4 + self.shift) * weight[:, None]
        return (source + change + self.leak).clamp(-1, 1)


@dataclass
class FakeFace:
    crop: np.ndarray
    matrix: np.ndarray
    box: tuple


class FakeAligner:
    """A plain image has no face; otherwise the centre square is 'the face' (plus a smaller second one)."""

    def detect(self, photo):
        if photo.std() < 2:
            return []
        h, w = photo.shape[:2]
        side = min(h, w)
        # Crops at twice the output size, as the real aligner's parse_size: the stage resizes them.
        crop = np.asarray(Image.fromarray(photo[:side, :side]).resize((2 * RES, 2 * RES)))
        small = np.zeros((2 * RES, 2 * RES, 3), np.uint8)
        return [FakeFace(small, np.eye(2, 3), (0, 0, 10, 10)), FakeFace(crop, np.eye(2, 3), (0, 0, side, side))]


@dataclass
class FakeParse:
    makeup: np.ndarray
    landmarks: np.ndarray | None = None


def as_amplifier(fake, kind: str = "dda", draft=None):
    """A fake DDA (or none) as stage 3 holds a style: models.dda_io.Amplifier."""
    return Amplifier(kind, fake, draft, "lid", RES)


class FakeParser:
    def parse(self, rgb):
        if rgb.mean() < 1:  # the small black 'face' must never be the one parsed
            return None
        size = rgb.shape[0]
        mask = np.zeros((size, size), np.uint8)
        mask[size // 8 : -size // 8, size // 8 : -size // 8] = 3
        mask[size // 4 : size // 4 + size // 8, size // 5 : size // 2] = 1
        mask[3 * size // 4 - size // 16 : 3 * size // 4, size // 3 : 2 * size // 3] = 2
        return FakeParse(mask)


# --------------------------------------------------------------------------------------------
# Inputs and runs
# --------------------------------------------------------------------------------------------
BAD = {"notes.png": "not_an_image", "truncated.jpg": "corrupt", "blank.png": "no_face"}


def make_inputs(folder: Path, n_faces: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    faces = sorted((SHARED_DATA / "faces").glob("*.jpg"))[:n_faces]
    if len(faces) < n_faces:  # no shared data: smooth random images stand in (the fakes do not care)
        rng = np.random.default_rng(0)
        for i in range(n_faces):
            base = rng.integers(40, 220, size=(6, 6, 3)).astype(np.uint8)
            Image.fromarray(base).resize((120, 100), Image.Resampling.BICUBIC).save(folder / f"face{i}.jpg")
    for path in faces:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.png").write_text("this is not an image\n")
    good = sorted(folder.glob("*.jpg"))[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    Image.new("RGB", (80, 80), (128, 128, 128)).save(folder / "blank.png")
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return make_inputs(tmp_path_factory.mktemp("amplify_in") / "faces")


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def fake_cfg(inputs: Path, out: Path, *overrides: str):
    base = [f"input_dir={inputs}", f"output_dir={out}", "batch_size=3", "checkpoint=fake.pt", "contact_sheet_count=4"]
    return load_config(amp.DEFAULT_CONFIG, [*base, *overrides])


def run_fake(inputs, out, accelerator, *overrides, models=None):
    cfg = fake_cfg(inputs, out, *overrides)
    models = models or {"fake.pt": FakeDDA(leak=0.02)}
    models = {k: v if isinstance(v, Amplifier) else as_amplifier(v) for k, v in models.items()}
    return amp.amplify(cfg, accelerator, models, FakeAligner(), FakeParser(), RES)


def pair_bytes(out: Path) -> dict[str, bytes]:
    return {
        f"{sub}/{p.name}": p.read_bytes() for sub in ("source", "target", "mask") for p in sorted((out / sub).glob("*"))
    }


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
def test_plan_names_seeds_and_batches(tmp_path):
    for name in ("b.png", "a.jpg", "a.png", "c.webp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    jobs = amplify_manifest.plan_jobs(tmp_path, None, 2, seed=0)
    assert [j.name for j in jobs] == ["a_jpg_v00", "a_jpg_v01", "a_png_v00", "a_png_v01"] + [
        "b_v00",
        "b_v01",
        "c_v00",
        "c_v01",
    ]
    assert len({j.seed for j in jobs}) == len(jobs)  # every pair its own seed
    assert [j.seed for j in amplify_manifest.plan_jobs(tmp_path, None, 2, seed=0)] == [j.seed for j in jobs]
    assert amplify_manifest.pair_seed(0, "a.jpg", 0) != amplify_manifest.pair_seed(1, "a.jpg", 0)
    assert [j.name for j in amplify_manifest.plan_jobs(tmp_path, 2, 1, seed=0)] == ["a_jpg", "a_png"]
    # The batches are the same whatever the process count: only who runs them changes.
    one = amplify_manifest.my_batches(jobs, 3, 0, 1)
    two = amplify_manifest.my_batches(jobs, 3, 0, 2) + amplify_manifest.my_batches(jobs, 3, 1, 2)
    as_names = lambda batches: sorted(tuple(j.name for j in b) for b in batches)  # noqa: E731
    assert as_names(one) == as_names(two) and len(amplify_manifest.my_batches(jobs, 3, 1, 2)) == 1


def test_style_groups_take_each_region_from_its_style(tmp_path):
    cfg = load_config(amp.DEFAULT_CONFIG, ["checkpoint=a.pt"])
    assert amp.style_groups(cfg) == [("a.pt", {})]  # the learned FGMM weights as they are
    cfg = load_config(amp.DEFAULT_CONFIG, ["checkpoint=a.pt", "region_weights.skin=0.5"])
    assert amp.style_groups(cfg) == [("a.pt", {"skin": 0.5})]
    cfg = load_config(amp.DEFAULT_CONFIG, ["checkpoint=a.pt", "styles={lips: b.pt}", "region_weights.lips=0.7"])
    assert amp.style_groups(cfg) == [("a.pt", {"lips": 0.0}), ("b.pt", {"eyes": 0.0, "skin": 0.0, "lips": 0.7})]
    assert amp.style_record(cfg) == {"eyes": "a.pt", "skin": "a.pt", "lips": "b.pt"}


# --------------------------------------------------------------------------------------------
# A whole run with the fakes
# --------------------------------------------------------------------------------------------
def test_fake_run_writes_the_paired_format(inputs, accelerator, tmp_path):
    out = tmp_path / "amplified"
    summary = run_fake(inputs, out, accelerator)
    records = manifest(out)
    ok = [r for r in records if r["status"] == "ok"]
    skipped = {r["input"]: r["reason"] for r in records if r["status"] == "skipped"}
    assert skipped == BAD  # each bad file with the right reason
    assert len(ok) == len(records) - len(BAD) == summary["pairs"] == summary["made"]
    assert summary["skipped_by_reason"] == {"corrupt": 1, "no_face": 1, "not_an_image": 1}
    assert summary["remaining"] == 0 and summary["planned_pairs"] == len(records)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert not (out / amplify_manifest.SHARD_DIR).exists()  # shards merged and removed
    assert [r["input"] for r in records] == sorted(r["input"] for r in records)  # plan order

    # Stage 4 reads it as it is.
    scan = scan_pairs(out)
    assert sorted(p.name for p in scan.pairs) == sorted(r["name"] for r in ok) and not scan.skipped
    item = PairedDataset(scan.pairs, RES)[0]
    assert (
        item["source"].shape == (3, RES, RES)
        and item["has_mask"]
        and set(item["mask"].unique().tolist())
        <= {
            0,
            1,
            2,
            3,
        }
    )

    for record in ok:
        source = read_rgb(out / "source" / f"{record['name']}.png")
        target = read_rgb(out / "target" / f"{record['name']}.png")
        mask = read_labels(out / "mask" / f"{record['name']}.png")
        assert source.shape == target.shape == (RES, RES, 3)
        # Outside the makeup regions: the source, bit for bit (the fake DDA leaks there on purpose).
        assert np.array_equal(target[mask == 0], source[mask == 0])
        assert (target[mask == 2] != source[mask == 2]).any()  # and the makeup is there
        assert record["seconds"] >= 0 and record["strength"] == 0.3 and record["style"] == "fake.pt"
        assert record["matrix"] == [[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]  # photo -> crop at the output size
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height > 4 * RES  # four rows


def test_region_weight_zero_stays_the_source(inputs, accelerator, tmp_path):
    dda = FakeDDA()
    run_fake(
        inputs,
        tmp_path / "out",
        accelerator,
        "region_weights.lips=0",
        "region_weights.eyes=0.5",
        models={"fake.pt": dda},
    )
    assert dda.calls[0]["region_weights"] == {"eyes": 0.5, "lips": 0.0}
    for record in [r for r in manifest(tmp_path / "out") if r["status"] == "ok"]:
        source, target, mask = (
            read_rgb(tmp_path / "out" / "source" / f"{record['name']}.png"),
            read_rgb(tmp_path / "out" / "target" / f"{record['name']}.png"),
            read_labels(tmp_path / "out" / "mask" / f"{record['name']}.png"),
        )
        assert np.array_equal(target[mask == 2], source[mask == 2])
        assert (target[mask == 1] != source[mask == 1]).any()


def test_style_combination(inputs, accelerator, tmp_path):
    out = tmp_path / "out"
    models = {"fake.pt": FakeDDA(shift=0.0), "red.pt": FakeDDA(shift=0.8)}
    run_fake(inputs, out, accelerator, "styles={lips: red.pt}", "num_images=2", models=models)
    assert models["red.pt"].calls[0]["region_weights"] == {"eyes": 0.0, "skin": 0.0}
    assert models["fake.pt"].calls[0]["region_weights"] == {"lips": 0.0}
    record = manifest(out)[0]
    assert record["style"] == {"eyes": "fake.pt", "lips": "red.pt", "skin": "fake.pt"}
    source = read_rgb(out / "source" / f"{record['name']}.png").astype(int)
    target = read_rgb(out / "target" / f"{record['name']}.png").astype(int)
    mask = read_labels(out / "mask" / f"{record['name']}.png")
    # The red style pushes lips up on average, the plain one pushes the skin down.
    assert (target - source)[mask == 2].mean() > 5 and (target - source)[mask == 3].mean() < -5


def test_same_seed_same_images_other_seed_other_images(inputs, accelerator, tmp_path):
    run_fake(inputs, tmp_path / "a", accelerator, "variants_per_face=2")
    run_fake(inputs, tmp_path / "b", accelerator, "variants_per_face=2", "batch_size=2")
    run_fake(inputs, tmp_path / "c", accelerator, "variants_per_face=2", "seed=1")
    a, b, c = pair_bytes(tmp_path / "a"), pair_bytes(tmp_path / "b"), pair_bytes(tmp_path / "c")
    assert a == b  # per-pair generators: batch composition does not matter
    targets = [k for k in a if k.startswith("target/")]
    assert all(a[k] != c[k] for k in targets)
    v0, v1 = sorted(targets)[:2]
    assert v0.endswith("_v00.png") and v1.endswith("_v01.png") and a[v0] != a[v1]


class TimedAligner(FakeAligner):
    """FakeAligner that takes `delay` seconds a photo and records when, and on which thread."""

    def __init__(self, delay: float):
        self.delay, self.spans = delay, []

    def detect(self, photo):
        start = time.perf_counter()
        time.sleep(self.delay)
        faces = super().detect(photo)
        self.spans.append((start, time.perf_counter(), threading.current_thread().name))
        return faces


class TimedDDA(FakeDDA):
    def __init__(self, delay: float):
        super().__init__(leak=0.02, delay=delay)
        self.spans = []

    def img2img(self, source, makeup_mask, **kwargs):
        start = time.perf_counter()
        out = super().img2img(source, makeup_mask, **kwargs)
        self.spans.append((start, time.perf_counter(), threading.current_thread().name))
        return out


def test_faces_are_prepared_while_the_model_runs_with_the_same_output(inputs, accelerator, tmp_path):
    """The next batch's faces are found on another thread during the DDA call; the bytes and manifest are those
    of the plain order, and each written pair equals prepare -> generate -> keep-the-source done in turn."""
    run_fake(inputs, tmp_path / "reference", accelerator)
    aligner, dda = TimedAligner(delay=0.05), TimedDDA(delay=0.4)
    cfg = fake_cfg(inputs, tmp_path / "overlapped")
    amp.amplify(cfg, accelerator, {"fake.pt": as_amplifier(dda)}, aligner, FakeParser(), RES)
    main = threading.current_thread().name
    assert {thread for *_, thread in aligner.spans} != {main} and {thread for *_, thread in dda.spans} == {main}
    overlaps = [a for a in aligner.spans if any(a[0] < d[1] and d[0] < a[1] for d in dda.spans)]
    assert overlaps, (aligner.spans, dda.spans)  # some face was prepared while the model ran
    out = tmp_path / "overlapped"
    assert pair_bytes(out) == pair_bytes(tmp_path / "reference")
    assert without_seconds(manifest(out)) == without_seconds(manifest(tmp_path / "reference"))

    weights = amp.run_settings(cfg, RES)["region_weights"]
    for record in [r for r in manifest(out) if r["status"] == "ok"]:
        face = face_crops.prepare_face(Path(cfg.input_dir) / record["input"], FakeAligner(), FakeParser(), RES)
        source, mask = from_uint8(face.source)[None], torch.from_numpy(face.mask).long()[None]
        models = {"fake.pt": as_amplifier(FakeDDA(leak=0.02))}
        made = to_uint8(amp.generate(models, cfg, source, mask, [record["seed"]]))[0]
        expected = amp.keep_source_outside_makeup(face.source, made, face.mask, weights)
        assert np.array_equal(read_rgb(out / "target" / f"{record['name']}.png"), expected)


def test_a_write_error_stops_the_run_and_no_line_names_an_unwritten_pair(inputs, accelerator, tmp_path, monkeypatch):
    written = []
    write_pair = amp.write_pair

    def failing_write(out_dir, name, face, target):
        if len(written) == 2:
            raise OSError(f"disk full writing {name}")
        write_pair(out_dir, name, face, target)
        written.append(name)

    monkeypatch.setattr(amp, "write_pair", failing_write)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        run_fake(inputs, out, accelerator)
    lines = (out / amplify_manifest.SHARD_DIR / "rank000.jsonl").read_text().splitlines()
    ok = [json.loads(line)["name"] for line in lines if json.loads(line)["status"] == "ok"]
    assert ok == written  # the two finished pairs, in plan order; nothing for the failed one or after it
    monkeypatch.setattr(amp, "write_pair", write_pair)
    summary = run_fake(inputs, out, accelerator)  # a rerun resumes from there
    assert summary["resumed"] == 2 and summary["remaining"] == 0
    run_fake(inputs, tmp_path / "reference", accelerator)
    assert pair_bytes(out) == pair_bytes(tmp_path / "reference")


def test_stop_and_resume_gives_the_same_set(inputs, accelerator, tmp_path):
    reference = tmp_path / "one"
    run_fake(inputs, reference, accelerator)
    out = tmp_path / "resumed"
    first = run_fake(inputs, out, accelerator, "max_new_pairs=2")
    assert first["made"] == 2 and first["remaining"] > 0
    dda = FakeDDA(leak=0.02)
    second = run_fake(inputs, out, accelerator, models={"fake.pt": dda})
    assert second["remaining"] == 0 and second["resumed"] == 2
    assert first["made"] + second["made"] == second["pairs"]
    assert pair_bytes(out) == pair_bytes(reference)
    assert without_seconds(manifest(out)) == without_seconds(manifest(reference))
    calls = len(dda.calls)
    third = run_fake(inputs, out, accelerator, models={"fake.pt": dda})  # nothing left: no DDA call
    assert third["made"] == 0 and third["pairs"] == second["pairs"] and len(dda.calls) == calls


def test_resume_refuses_other_settings(inputs, accelerator, tmp_path):
    run_fake(inputs, tmp_path / "out", accelerator, "num_images=1")
    with pytest.raises(MakeupError, match="strength"):
        run_fake(inputs, tmp_path / "out", accelerator, "num_images=1", "strength=0.5")
    with pytest.raises(MakeupError, match="seed"):
        run_fake(inputs, tmp_path / "out", accelerator, "num_images=1", "seed=3")
    cfg = fake_cfg(inputs, tmp_path / "out", "num_images=1")
    with pytest.raises(MakeupError, match="resolution"):
        amp.amplify(cfg, accelerator, {"fake.pt": as_amplifier(FakeDDA())}, FakeAligner(), FakeParser(), RES // 2)


class SplitAccelerator:
    """Stands in for process `index` of `world` (the batches each would take, run one after the other)."""

    def __init__(self, index: int, world: int):
        self.process_index, self.num_processes, self.device = index, world, torch.device("cpu")
        self.is_main_process = self.is_local_main_process = index == 0

    def wait_for_everyone(self):
        pass


def test_two_process_split_gives_the_same_set(inputs, accelerator, tmp_path):
    run_fake(inputs, tmp_path / "one", accelerator)
    out = tmp_path / "two"
    run_fake(inputs, out, SplitAccelerator(1, 2))  # rank 1 writes its shard and stops
    assert (out / amplify_manifest.SHARD_DIR / "rank001.jsonl").is_file() and not (out / "manifest.jsonl").exists()
    run_fake(inputs, out, SplitAccelerator(0, 2))  # rank 0 does its share, then merges
    assert pair_bytes(out) == pair_bytes(tmp_path / "one")
    assert without_seconds(manifest(out)) == without_seconds(manifest(tmp_path / "one"))


KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from accelerate import Accelerator
import dda_amplify as amp
from test_amplify import FakeAligner, FakeDDA, FakeParser, as_amplifier, fake_cfg, RES
cfg = fake_cfg({inputs!r}, {out!r}, "batch_size=2")
amp.amplify(cfg, Accelerator(cpu=True), {{"fake.pt": as_amplifier(FakeDDA(leak=0.02, delay={delay}))}}, FakeAligner(), FakeParser(), RES)
"""


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_set(inputs, accelerator, tmp_path):
    reference, out = tmp_path / "one", tmp_path / "killed"
    run_fake(inputs, reference, accelerator, "batch_size=2")
    script = KILL_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), inputs=str(inputs), out=str(out), delay=1.0)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=one_thread_env()
    )
    shard = out / amplify_manifest.SHARD_DIR / "rank000.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if shard.is_file() and shard.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    made_before = len(list((out / "target").glob("*.png")))
    assert 0 < made_before < len(list((reference / "target").glob("*.png")))
    assert not list(out.rglob(".*.tmp*"))  # no temporary file left under a final name or beside it
    summary = run_fake(inputs, out, accelerator, "batch_size=2")
    assert summary["resumed"] >= 2 and summary["remaining"] == 0
    assert pair_bytes(out) == pair_bytes(reference)
    assert without_seconds(manifest(out)) == without_seconds(manifest(reference))


LAUNCH_SCRIPT = """
import sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from accelerate import Accelerator
import dda_amplify as amp
from test_amplify import FakeAligner, FakeDDA, FakeParser, as_amplifier, fake_cfg, RES
cfg = fake_cfg({inputs!r}, {out!r}, "batch_size=2")
accelerator = Accelerator(cpu=True)
amp.amplify(cfg, accelerator, {{"fake.pt": as_amplifier(FakeDDA(leak=0.02))}}, FakeAligner(), FakeParser(), RES)
accelerator.end_training()  # as main() does: a process group left to exit teardown can abort gloo's threads
"""


@pytest.mark.slow
def test_torchrun_two_processes_give_the_same_set(inputs, accelerator, tmp_path):
    """Two real processes (gloo on CPU, as `accelerate launch` makes on GPUs): one merged manifest, same pairs."""
    run_fake(inputs, tmp_path / "one", accelerator, "batch_size=2")
    out = tmp_path / "two"
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), inputs=str(inputs), out=str(out)))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    result = subprocess.run([*torchrun, str(script)], capture_output=True, text=True, timeout=120, env=one_thread_env())
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["made"] == summary["pairs"] == 5
    assert not (out / amplify_manifest.SHARD_DIR).exists()
    assert pair_bytes(out) == pair_bytes(tmp_path / "one")
    assert without_seconds(manifest(out)) == without_seconds(manifest(tmp_path / "one"))


def test_keep_source_outside_makeup():
    source = np.zeros((4, 4, 3), np.uint8)
    target = np.full((4, 4, 3), 9, np.uint8)
    mask = np.array([[0, 1, 2, 3]] * 4, np.uint8)
    out = amp.keep_source_outside_makeup(source, target, mask, {"eyes": 1.0, "lips": 0.0, "skin": 0.3})
    assert out[:, 0].max() == 0 and out[:, 2].max() == 0 and out[:, 1].min() == 9 and out[:, 3].min() == 9


@pytest.mark.parametrize(
    "override, message",
    [
        ("scheduler=pndm", "scheduler"),
        ("strength=0.0", "strength"),
        ("batch_size=0", "batch_size"),
        ("styles={nose: a.pt}", "styles"),
        ("region_weights.lips=-1", "region_weights"),
        ("region_weights.lips=red", "region_weights"),
        ("checkpoint=missing.pt", "checkpoint"),
    ],
)
def test_config_errors_name_the_key(override, message, inputs, tmp_path):
    ckpt = tmp_path / "ok.pt"
    ckpt.write_bytes(b"")
    cfg = load_config(amp.DEFAULT_CONFIG, [f"checkpoint={ckpt}", f"input_dir={inputs}", override])
    with pytest.raises(MakeupError, match=f"'{message}'"):
        amp.check_config(cfg)


def test_missing_input_dir(tmp_path):
    ckpt = tmp_path / "ok.pt"
    ckpt.write_bytes(b"")
    cfg = load_config(amp.DEFAULT_CONFIG, [f"checkpoint={ckpt}", f"input_dir={tmp_path / 'nope'}"])
    with pytest.raises(MakeupError, match="input_dir"):
        amp.check_config(cfg)


# --------------------------------------------------------------------------------------------
# The real script: tiny SD DDA, MediaPipe face tools, stage 4 reading the output
# --------------------------------------------------------------------------------------------
REAL = ["num_steps=4", "strength=0.5", "batch_size=2", "region_weights.lips=0", "wandb.mode=disabled"]


@pytest.fixture(scope="module")
def tiny_dda_checkpoint(tmp_path_factory) -> Path:
    """A DDA checkpoint as dda_training.py writes it ({"dda": DDA.state()}), tiny SD at 64x64, random LoRA.

    Built directly rather than by running stage 2 (which tests/test_dda.py covers, loading included):
    that would add half a minute to this file on two shared cores.
    """
    pytest.importorskip("mediapipe")
    from common import save_checkpoint
    from models.dda import DDA
    from models.sd_base import load_base_model
    from models.tiny_sd import build_tiny_sd

    folder = tmp_path_factory.mktemp("tiny_dda")
    dda = DDA(load_base_model(build_tiny_sd(folder / "tiny_sd")), prompt="a face with sks makeup", resolution=RES)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in dda.unet.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: make the LoRA change something, as a trained one does
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return save_checkpoint({"dda": dda.state()}, folder / "dda_model" / "dda_final.pt")


@pytest.fixture(scope="module")
def real_run(tiny_dda_checkpoint, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    faces = sorted((SHARED_DATA / "faces").glob("*.jpg"))[:3]
    if len(faces) < 3:
        pytest.skip(f"shared faces not found: {SHARED_DATA / 'faces'}")
    inputs = tmp_path_factory.mktemp("real_in")
    for path in faces:
        (inputs / path.name).write_bytes(path.read_bytes())
    (inputs / "notes.png").write_text("not an image")
    out = tmp_path_factory.mktemp("real_out") / "amplified"
    overrides = [f"checkpoint={tiny_dda_checkpoint}", f"input_dir={inputs}", f"output_dir={out}", *REAL]
    result = subprocess.run(
        [sys.executable, str(REPO / "dda_amplify.py"), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env=one_thread_env(),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out, inputs, overrides


@pytest.mark.slow
def test_real_script_makes_pairs_that_keep_the_source_outside_makeup(real_run):
    out, _, _ = real_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == summary["made"] == 3 and summary["skipped_by_reason"] == {"not_an_image": 1}
    assert summary["resolution"] == RES and summary["images_per_second"] > 0
    assert (out / "contact_sheet.png").is_file() and (out / "config.yaml").is_file()
    for record in [r for r in manifest(out) if r["status"] == "ok"]:
        source = read_rgb(out / "source" / f"{record['name']}.png")
        target = read_rgb(out / "target" / f"{record['name']}.png")
        mask = read_labels(out / "mask" / f"{record['name']}.png")
        assert source.shape == (RES, RES, 3) and set(np.unique(mask)) >= {1, 2, 3}  # eyes, lips, skin found
        assert np.array_equal(target[mask == 0], source[mask == 0])  # background: the source
        assert np.array_equal(target[mask == 2], source[mask == 2])  # lips at weight 0: the source
        assert (target[mask == 3] != source[mask == 3]).any()  # skin got the DDA's change
        assert record["region_weights"] == {"eyes": None, "lips": 0.0, "skin": None}


@pytest.mark.slow
def test_real_resume_remakes_a_lost_pair_bit_for_bit(real_run, accelerator):
    out, _, overrides = real_run
    cfg = load_config(amp.DEFAULT_CONFIG, overrides)
    models, resolution = amp.build_models(cfg, torch.device("cpu"))
    assert resolution == RES  # the DDA's training resolution, from the checkpoint
    aligner, parser = face_crops.build_face_tools(cfg, resolution)
    name = manifest(out)[1]["name"]
    before = pair_bytes(out)
    (out / "target" / f"{name}.png").unlink()
    summary = amp.amplify(cfg, accelerator, models, aligner, parser, resolution)
    assert summary["made"] == 1 and summary["resumed"] == 2
    assert pair_bytes(out) == before  # the same seed and batch: the same bytes
    summary = amp.amplify(cfg, accelerator, models, aligner, parser, resolution)
    assert summary["made"] == 0 and summary["pairs"] == 3

    # The DDA itself, before the stage's paste-back, keeps background and weight-0 lips exactly.
    record = manifest(out)[0]
    face = face_crops.prepare_face(Path(cfg.input_dir) / record["input"], aligner, parser, resolution)
    source = from_uint8(face.source)[None]  # (1, 3, R, R)
    with torch.no_grad():
        raw = to_uint8(amp.generate(models, cfg, source, torch.from_numpy(face.mask).long()[None], [record["seed"]]))
    keep = (face.mask == 0) | (face.mask == 2)
    assert np.array_equal(raw[0][keep], face.source[keep])
    target = read_rgb(out / "target" / f"{record['name']}.png")
    assert np.abs(raw[0].astype(int) - target).max() <= 1  # and it is what the script wrote


@pytest.mark.slow
def test_a_checkpoint_from_before_the_draft_makes_the_pairs_it_made_then(real_run, tiny_dda_checkpoint, accelerator):
    """A checkpoint without `amplifier` or `draft` (as stage 2 wrote them before the draft) runs the DDA alone, and
    its pairs are bit for bit what stage 3 made then: each batch through DDA.img2img with the pair's own seed, the
    background and weight-0 regions copied from the source. A manifest written before the key resumes."""
    from models.dda_io import load_dda

    out, inputs, overrides = real_run
    cfg = load_config(amp.DEFAULT_CONFIG, overrides)
    assert "amplifier" not in torch.load(tiny_dda_checkpoint, weights_only=True)
    records = [r for r in manifest(out) if r["status"] == "ok"]
    assert {r["amplifier"] for r in records} == {"dda"}
    dda = load_dda(tiny_dda_checkpoint)
    aligner, parser = face_crops.build_face_tools(cfg, RES)
    faces = [face_crops.prepare_face(inputs / r["input"], aligner, parser, RES) for r in records]
    weights = {"eyes": None, "lips": 0.0, "skin": None}  # the run's region_weights; stage 3 passes the set ones on
    overrides = {region: value for region, value in weights.items() if value is not None}
    for start in range(0, len(records), 2):  # the run's batches (batch_size=2), in plan order
        batch = slice(start, start + 2)
        source = torch.stack([from_uint8(f.source) for f in faces[batch]])
        mask = torch.stack([torch.from_numpy(f.mask).long() for f in faces[batch]])
        generators = [torch.Generator().manual_seed(int(r["seed"])) for r in records[batch]]
        with torch.no_grad():
            made = dda.img2img(source, mask, region_weights=overrides, strength=0.5, num_steps=4, generator=generators)
        for record, face, image in zip(records[batch], faces[batch], to_uint8(made.clamp(-1, 1))):
            expected = amp.keep_source_outside_makeup(face.source, image, face.mask, weights)
            assert np.array_equal(read_rgb(out / "target" / f"{record['name']}.png"), expected), record["name"]

    # the manifest of a run made before the key: it resumes (nothing left to make), not "other settings"
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    (out / "manifest.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "amplifier"}) + "\n"
                                                for r in lines))  # fmt: skip
    models, resolution = amp.build_models(cfg, torch.device("cpu"))
    summary = amp.amplify(cfg, accelerator, models, aligner, parser, resolution)
    assert summary["made"] == 0 and summary["pairs"] == 3 and summary["amplifier"] == "dda"


@pytest.mark.slow
def test_real_output_trains_tinybeauty_without_conversion(real_run, tmp_path):
    out, _, _ = real_run
    command = [
        sys.executable,
        str(REPO / "tinybeauty_training.py"),
        f"data.root={out}",
        f"output_dir={tmp_path / 'tb'}",
        "train.epochs=1",
        "train.batch_size=2",
        f"data.size={RES}",
        "wandb.mode=disabled",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=one_thread_env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "tb" / "summary.json").read_text())
    assert summary  # stage 4 ran an epoch on the amplified pairs as they are


def test_fgmm_colour_false_leaves_the_fitted_colour_matrices_out(tiny_dda_checkpoint, tmp_path):
    from common import save_checkpoint
    from models.dda_io import load_dda

    dda = load_dda(tiny_dda_checkpoint)
    dda.fgmm.set_colours({"lips": [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]})
    checkpoint = save_checkpoint({"dda": dda.state()}, tmp_path / "dda_final.pt")
    base = [f"checkpoint={checkpoint}", f"input_dir={tmp_path}", "strength=0.5", "num_steps=4", "scheduler=ddim"]
    settings = {}
    for flag, expected in ((True, {"lips"}), (False, set())):
        cfg = load_config(amp.DEFAULT_CONFIG, [*base, f"fgmm_colour={flag}"])
        models, _ = amp.build_models(cfg, torch.device("cpu"))
        assert set(models[str(checkpoint)].dda.fgmm.colours()) == expected
        settings[flag] = amp.run_settings(cfg, RES)
    # recorded only when off, so the manifests of runs made before the key still match on resume
    assert "fgmm_colour" not in settings[True] and settings[False]["fgmm_colour"] is False

"""The README's demo pipeline (issue 6), at its smallest settings: every stage's outputs exist and the
summary's figures are the ones in the run folder's files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE_FACES

pytestmark = pytest.mark.slow  # trains a model, runs the stages or drives a browser


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    if not SAMPLE_FACES.is_dir():
        pytest.skip("data/samples/faces is missing")
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "WANDB_SILENT": "true"}
    result = subprocess.run(
        [sys.executable, "run_demo.py", "--out", str(out), "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


EXPECTED = [
    "seed_pairs/summary.json",
    "seed_pairs/contact_sheet.png",
    "amplified_truth/summary.json",
    "dda_model/dda_final.pt",
    "dda_model/draft_samples.png",  # the default amplifier: the makeup draft (no LoRA, no DDA samples)
    "dda_model/summary.json",
    "amplified/manifest.jsonl",
    "amplified/contact_sheet.png",
    "amplified/summary.json",
    "tinybeauty_model/tinybeauty_best_psnr.pt",
    "tinybeauty_model/tinybeauty_final.pt",
    "tinybeauty_model/samples_epoch_2.png",
    "tinybeauty_model/summary.json",
    "photo_makeup/two_faces.png",
    "export/tinybeauty_fp32.onnx",
    "export/tinybeauty_int8.onnx",
    "export/export_report.json",
    "summary.md",
    "summary.png",
    "summary.json",
]


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_stage_wrote_its_outputs(demo_run):
    missing = [name for name in EXPECTED if not (demo_run / name).is_file()]
    assert not missing, f"missing outputs: {missing}"
    for stage in ("seed_pairs", "amplified"):
        names = {p.stem for p in (demo_run / stage / "source").iterdir()}
        assert names == {p.stem for p in (demo_run / stage / "target").iterdir()}
        assert names == {p.stem for p in (demo_run / stage / "mask").iterdir()}


def test_stages_hand_off_consistently(demo_run):
    seed = _json(demo_run / "seed_pairs" / "summary.json")
    dda = _json(demo_run / "dda_model" / "summary.json")
    amp = _json(demo_run / "amplified" / "summary.json")
    tb = _json(demo_run / "tinybeauty_model" / "summary.json")
    assert seed["pairs_total"] == 5 and dda["num_pairs"] == 5
    # stage 3 amplified faces that stage 1 did not use
    inputs = {
        json.loads(line)["input"] for line in (demo_run / "amplified" / "manifest.jsonl").read_text().splitlines()
    }
    assert not {Path(i).stem for i in inputs} & set(seed["names"])
    assert amp["pairs"] == len(list((demo_run / "amplified" / "target").iterdir())) > 0
    # stage 4 trained on exactly the amplified pairs
    assert tb["pairs_train"] + tb["pairs_val"] == amp["pairs"]
    assert tb["params"] <= 80_000


def test_summary_figures_are_the_files_figures(demo_run):
    summary_md = (demo_run / "summary.md").read_text()
    dda = _json(demo_run / "dda_model" / "summary.json")
    amp = _json(demo_run / "amplified" / "summary.json")
    tb = _json(demo_run / "tinybeauty_model" / "summary.json")
    export = _json(demo_run / "export" / "export_report.json")
    timings = _json(demo_run / "timings.json")
    expected = [
        f"makeup draft (`amplifier: {dda['amplifier']}`)",
        f"each seed drafted from the others: {dda['draft']['leave_one_out_mean']['psnr_db']:.2f} dB against its "
        f"target (the plain face {dda['draft']['leave_one_out_mean']['identity_psnr_db']:.2f} dB)",
        f"{amp['pairs']} pairs in `amplified/`",
        f"{tb['params']} parameters",
        f"val PSNR {tb['best_val_psnr']:.2f} dB (identity {tb['identity_psnr']:.2f} dB)",
        f"{export['int8']['size_kb']:.1f} KB",
        f"{export['fp32']['size_kb']:.1f} KB",
        f"| {timings['dda']:.1f} |",
    ]
    truth = _json(demo_run / "amplified_truth" / "summary.json")
    assert truth["faces"] == amp["pairs"]
    if truth["r2"] is not None:
        expected.append(f"makeup R^2 {truth['r2']:.2f}")
    for text in expected:
        assert text in summary_md, f"summary.md lacks '{text}'"
    # every number in the TinyBeauty row traces back to a file
    row = next(line for line in summary_md.splitlines() if line.startswith("| 4. TinyBeauty"))
    assert re.search(rf"{tb['pairs_train']} train / {tb['pairs_val']} val", row)
    collected = _json(demo_run / "summary.json")
    assert collected["tinybeauty"]["best_val_psnr"] == tb["best_val_psnr"]
    assert collected["amplify"]["pairs"] == amp["pairs"]


def test_rerun_skips_finished_stages(demo_run):
    before = (demo_run / "dda_model" / "dda_final.pt").stat().st_mtime_ns
    result = subprocess.run(
        [sys.executable, "run_demo.py", "--out", str(demo_run), "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.count("[skip]") == 7
    assert (demo_run / "dda_model" / "dda_final.pt").stat().st_mtime_ns == before

"""make_style.py end to end on the tiny model: killed inside the DDA stage, the same command resumes there, and
the style folder it writes is one deploy/styles.py loads and tinybeauty_inference.py --style runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, SAMPLE_FACES

pytestmark = pytest.mark.slow  # trains a model, runs the stages or drives a browser

TEMPLATE = "configs/makeup/classic_red_lip.yaml"
DDA_EPOCHS = 6
TINY = [
    "--amplify", "6",
    # draft+dda: the amplifier with a DDA to train, so a kill can land inside stage 2 and resume there
    "--dda-args", f"amplifier=draft+dda train.resolution=32 train.epochs={DDA_EPOCHS} train.checkpoint_every=1 "
                  f"train.sample_every={DDA_EPOCHS}",
    "--amplify-args", "resolution=64",
    "--tinybeauty-args", "data.size=64 train.epochs=2 train.batch_size=4 train.warmup_steps=2 data.val_fraction=0.3",
]  # fmt: skip


def command(out: Path, tiny_sd: Path, *extra: str) -> list[str]:
    return [sys.executable, "make_style.py", "--template", TEMPLATE, "--faces", str(SAMPLE_FACES), "--out", str(out),
            "--pretrained", str(tiny_sd), *TINY, *extra]  # fmt: skip


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_SILENT": "true"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=1200)


def kill_when(cmd: list[str], ready, timeout: float = 900) -> None:
    """Start `cmd` in its own process group and kill the whole group (make_style.py and its stage, as a power cut
    would) as soon as `ready()` holds."""
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    deadline = time.time() + timeout
    try:
        while not ready():
            assert process.poll() is None, f"make_style.py ended (status {process.returncode}) before the kill"
            assert time.time() < deadline, "the moment to kill never came"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def made(tiny_sd, tmp_path_factory):
    """A style made by a run killed after the DDA's second checkpoint, then the same command again."""
    out = tmp_path_factory.mktemp("make_style") / "tiny_red"
    dda = out / "work" / "dda_model"
    kill_when(command(out, tiny_sd), lambda: (dda / "dda_checkpoint_epoch_2.pt").is_file())
    killed_at = sorted(int(p.stem.rsplit("_", 1)[1]) for p in dda.glob("dda_checkpoint_epoch_*.pt"))[-1]
    assert not (dda / "summary.json").exists() and killed_at < DDA_EPOCHS  # it stopped inside the DDA stage
    timings_after_kill = json.loads((out / "work" / "timings.json").read_text())
    second = run(command(out, tiny_sd))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return out, tiny_sd, killed_at, timings_after_kill, second.stdout


def test_the_rerun_resumes_inside_the_stage_it_was_killed_in(made):
    out, _, killed_at, timings_after_kill, stdout = made
    assert "[done before] 1. seed pairs" in stdout  # not made again
    assert "2. amplifier: draft+dda (dda_training.py) (resuming)" in stdout
    assert f"--resume {out / 'work' / 'dda_model' / f'dda_checkpoint_epoch_{killed_at}.pt'}" in stdout
    dda = json.loads((out / "work" / "dda_model" / "summary.json").read_text())
    assert dda["epochs"] == DDA_EPOCHS and dda["epochs_this_run"] == DDA_EPOCHS - killed_at
    # draft+dda: the DDA trained on the seeds' leave-one-out drafts, RDM's alpha held at 1, the resume too
    assert dda["amplifier"] == "draft+dda" and dda["rdm_alpha"] == 1.0 and dda["draft"]["leave_one_out"]
    assert "3. amplification (dda_amplify.py)\n" in stdout  # the stages after it ran once, from the start
    timings = json.loads((out / "work" / "timings.json").read_text())
    assert timings["dda"] > timings_after_kill["dda"] > 0  # the killed run's time is kept and added to
    assert set(timings) == {"seed_pairs", "dda", "amplify", "truth", "tinybeauty", "export"}


def test_the_style_folder_is_complete_and_runs(made, tmp_path):
    from deploy.styles import load_style
    from tinybeauty_inference import main

    out = made[0]
    style = load_style(out)
    assert style.title == "Classic red lip" and style.meta["made_by"] == "make_style.py"
    card = (out / "README.md").read_text()
    seeds = json.loads((out / "work" / "seed_pairs" / "summary.json").read_text())["names"]
    assert len(seeds) == 5 and all(name in card for name in seeds)
    for needed in ("python make_style.py --template configs/makeup/classic_red_lip.yaml", "## Time",
                   "Non-commercial research use only", "makeup R^2", "int8 against PyTorch", "not measured"):  # fmt: skip
        assert needed in card, needed
    # the figures themselves, from the stages' own summaries, not just their labels
    truth = json.loads((out / "work" / "truth" / "summary.json").read_text())
    export = json.loads((out / "work" / "export" / "export_report.json").read_text())
    r2 = {key: "n/a" if truth[key] is None else f"{truth[key]:.2f}" for key in ("r2", "r2_lips")}  # noise: no lips
    assert f"makeup R^2 {r2['r2']} over the face (lips {r2['r2_lips']}" in card
    assert f"int8 against PyTorch: {export['int8']['drop_db_vs_pytorch']:+.3f} dB" in card
    assert (out / "summary.md").is_file() and "4. TinyBeauty training" in (out / "summary.md").read_text()
    if "phone" in export:  # --phone auto, with the phone environment (scripts/test.sh makes it): the app files too
        assert set(style.phone_files()) == {"tflite", "coreml"}
        assert f"{-export['phone']['tflite']['int8']['drop_db_vs_pytorch']:+.3f} dB against PyTorch" in card
    elif os.environ.get("CI"):
        raise AssertionError("make_style made no phone files in CI, where scripts/test.sh makes their environment")
    summary = main(["--style", str(out), "--input", str(SAMPLE_FACES / "AF1.jpg"), "--output", str(tmp_path)])
    assert summary["written"] == 1 and summary["model_size"] == 64


def test_a_finished_style_reruns_as_a_no_op_and_other_arguments_are_refused(made):
    out, tiny_sd, *_ = made
    before = (out / "tinybeauty_fp32.onnx").read_bytes()
    again = run(command(out, tiny_sd))
    assert again.returncode == 0 and again.stdout.count("[done before]") == 6
    assert (out / "tinybeauty_fp32.onnx").read_bytes() == before
    other = run(command(out, tiny_sd)[: -len(TINY)] + ["--amplify", "7", *TINY[2:]])
    assert other.returncode == 2 and "amplify: 6 then, 7 now" in other.stderr


def test_quality_figures_go_on_the_card(made, tmp_path):
    out, tiny_sd, *_ = made
    quality = tmp_path / "quality.json"
    quality.write_text(json.dumps({"TinyBeauty vs truth, 100 held-out faces": "38.1 dB (truth pairs: 38.5 dB)"}))
    other = tmp_path / "copy"
    load = out / "work" / "load.json"  # the load the last stage ended at; the card gives it, not the rerun's
    recorded = load.read_text()
    load.write_text(json.dumps({"load_1min": 73.4}))
    try:
        # a new --out from the same work: the figures appear, the stages are all done before
        rerun = run(command(other, tiny_sd, "--work", str(out / "work"), "--quality", str(quality)))
    finally:
        load.write_text(recorded)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    card = (other / "README.md").read_text()
    assert "(load average 73.4 when its last stage finished)" in card
    assert "- TinyBeauty vs truth, 100 held-out faces: 38.1 dB (truth pairs: 38.5 dB)" in card
    assert "not measured" not in card
    assert np.array_equal(np.frombuffer((other / "tinybeauty_int8.onnx").read_bytes(), np.uint8),
                          np.frombuffer((out / "tinybeauty_int8.onnx").read_bytes(), np.uint8))  # fmt: skip

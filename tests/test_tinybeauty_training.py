"""tinybeauty_training.py end to end: a 2-epoch smoke run as a subprocess, exact resume, config rejections."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from errors import MakeupError
from tests.conftest import REPO, write_synthetic_pairs

# Tiny but real: 32x32 faces, the default model, two epochs.
FAST = ["data.size=32", "train.crop_size=0", "train.batch_size=4", "train.warmup_steps=2", "wandb.mode=disabled"]


@pytest.fixture(scope="module")
def pairs_with_bad_data(tmp_path_factory) -> Path:
    root = write_synthetic_pairs(tmp_path_factory.mktemp("data") / "pairs", n=10, size=40)
    (root / "source" / "orphan.png").write_bytes((root / "source" / "face000.png").read_bytes())  # no target
    (root / "source" / "broken.png").write_bytes(b"not a png")
    (root / "target" / "broken.png").write_bytes((root / "target" / "face000.png").read_bytes())
    return root


@pytest.fixture(scope="module")
def smoke_run(pairs_with_bad_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tb"
    cmd = [sys.executable, "tinybeauty_training.py", f"data.root={pairs_with_bad_data}", f"output_dir={out}",
           "train.epochs=2", "train.sample_every=1", *FAST]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out, proc.stdout + proc.stderr


@pytest.mark.slow
def test_smoke_run_writes_every_output(smoke_run):
    out, _ = smoke_run
    for name in ["config.yaml", "train.log", "split.json", "metrics.csv", "metrics.jsonl", "summary.json",
                 "samples_epoch_1.png", "samples_epoch_2.png", "tinybeauty_best_loss.pt", "tinybeauty_best_psnr.pt",
                 "tinybeauty_final.pt", "tinybeauty_last.pt"]:  # fmt: skip
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["val_psnr"]) > 10 and 0 < float(r["val_ssim"]) <= 1 for r in rows)
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 9 and len(split["val"]) == 1 and not set(split["train"]) & set(split["val"])


@pytest.mark.slow
def test_smoke_run_summary_and_checkpoints(smoke_run):
    out, _ = smoke_run
    summary = json.loads((out / "summary.json").read_text())
    for key in ["params", "macs", "size_kb", "identity_psnr", "best_val_psnr", "final_val_psnr", "final_val_ssim",
                "epochs", "seconds", "skipped_pairs", "pairs_train", "pairs_val", "steps"]:  # fmt: skip
        assert key in summary, key
    assert summary["epochs"] == 2 and summary["completed"] is True
    assert summary["params"] <= 80_000 and summary["size_kb"]["int8"] < 100
    state = torch.load(out / "tinybeauty_final.pt", weights_only=True)
    for key in ["model", "config", "epoch", "metrics", "optimizer", "scheduler", "scaler", "rng"]:
        assert key in state, key
    assert state["epoch"] == 2 and state["config"]["data"]["size"] == 32


def test_bad_pairs_are_named_counted_and_skipped(smoke_run):
    out, log_text = smoke_run
    assert "orphan.png" in log_text and "broken.png" in log_text
    assert "10 usable, 2 skipped" in log_text  # face000..009 kept; orphan and the corrupt source skipped
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_pairs"] == 2 and summary["pairs_train"] + summary["pairs_val"] == 10


@pytest.mark.slow
def test_resume_gives_exactly_the_uninterrupted_result(tmp_path):
    from tinybeauty_training import main

    root = write_synthetic_pairs(tmp_path / "pairs", n=8, size=32)
    common = [f"data.root={root}", "train.epochs=3", "train.crop_size=16", *FAST]
    main([*common, f"output_dir={tmp_path / 'straight'}"])
    main([*common, f"output_dir={tmp_path / 'split'}", "train.stop_after=1"])
    assert not (tmp_path / "split" / "tinybeauty_final.pt").exists()
    main(["--resume", str(tmp_path / "split" / "tinybeauty_last.pt"), "train.stop_after=0"])

    straight = torch.load(tmp_path / "straight" / "tinybeauty_final.pt", weights_only=True)
    resumed = torch.load(tmp_path / "split" / "tinybeauty_final.pt", weights_only=True)
    for name, weight in straight["model"].items():
        assert torch.equal(weight, resumed["model"][name]), name
    assert [r["val_loss"] for r in straight["history"]] == [r["val_loss"] for r in resumed["history"]]
    assert straight["step"] == resumed["step"]


@pytest.mark.parametrize(
    "override, key",
    [("train.epoch=3", "train.epoch"), ("train.lr=fast", "train.lr"), ("model.block=fancy", "model"),
     ("train.scheduler=step", "train.scheduler"), ("data.size=30", "data.size")],
)  # fmt: skip
def test_bad_config_stops_with_the_key(override, key, tmp_path):
    from tinybeauty_training import main

    with pytest.raises(MakeupError, match=key.replace(".", r"\.")):
        main([f"data.root={tmp_path}", f"output_dir={tmp_path / 'out'}", override])


@pytest.mark.parametrize("override", ["data.size=24", "data.size=40", "train.crop_size=24"])
def test_sizes_the_default_stem_cannot_run_name_the_key_and_the_factor(override, tmp_path):
    """The default model (3 levels, space_to_depth stem) downsamples 16x: 24 and 40 are multiples of 8 only."""
    from tinybeauty_training import main

    key = override.split("=")[0]
    with pytest.raises(MakeupError, match=rf"'{key}' must be .*multiple of 16 \(the model's downsampling factor"):
        main([f"data.root={tmp_path}", f"output_dir={tmp_path / 'out'}", override])


@pytest.mark.parametrize("model", [[], ["model.stem=full"], ["model.widths=[8,8,8,8]"]])
def test_every_accepted_size_runs_forward(model):
    """check_config accepts a size exactly when the model's forward pass runs at it."""
    from common import load_config
    from tinybeauty_training import DEFAULT_CONFIG, build_model, check_config

    accepted = []
    for size in range(8, 72, 8):
        cfg = load_config(DEFAULT_CONFIG, [f"data.size={size}", *model])
        try:
            check_config(cfg)
            ok = True
        except MakeupError as err:
            assert "data.size" in str(err)
            ok = False
        try:
            with torch.no_grad():
                build_model(cfg)(torch.zeros(1, 3, size, size))
            runs = True
        except RuntimeError:
            runs = False
        assert ok == runs, (size, ok, runs)
        accepted += [size] if ok else []
    factor = build_model(load_config(DEFAULT_CONFIG, model)).downsample_factor
    assert accepted == list(range(factor, 72, factor))


@pytest.mark.slow
def test_missing_dataset_is_a_one_line_error(tmp_path):
    cmd = [sys.executable, "tinybeauty_training.py", f"data.root={tmp_path / 'nowhere'}", f"output_dir={tmp_path}/o",
           "wandb.mode=disabled"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "error:" in proc.stderr and "nowhere" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()  # the input is checked before any output folder is made


def test_overrides_reach_the_run(smoke_run):
    out, _ = smoke_run
    config = (out / "config.yaml").read_text()
    assert "size: 32" in config and "epochs: 2" in config and "mode: disabled" in config


@pytest.mark.parametrize(
    "options", [["train.amp=true"], ["train.scheduler=plateau", "train.plateau_patience=0"], ["model.norm=batch"]]
)
@pytest.mark.slow
def test_options_train(options, tmp_path):
    """Mixed precision (bf16 autocast on CPU), the seed's ReduceLROnPlateau, BatchNorm: each runs 2 epochs."""
    from tinybeauty_training import main

    root = write_synthetic_pairs(tmp_path / "pairs", n=6, size=32)
    summary = main([f"data.root={root}", f"output_dir={tmp_path / 'run'}", "train.epochs=2", *FAST, *options])
    assert summary["completed"] and summary["final_val_psnr"] > 10
    state = torch.load(tmp_path / "run" / "tinybeauty_final.pt", weights_only=True)
    if "train.scheduler=plateau" in options:  # the first epoch runs at the full rate, no warmup
        assert state["history"][0]["lr"] == pytest.approx(state["config"]["train"]["lr"])

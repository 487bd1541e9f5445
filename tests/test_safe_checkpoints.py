"""Checkpoints load without pickle: a crafted file is refused by every reader and never runs, every file a
smoke run writes loads with weights_only=True, and convert_checkpoint.py turns an old-format file into one
that resumes exactly."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from errors import CheckpointError
from tests.conftest import REPO, write_synthetic_pairs

TB_FAST = ["data.size=32", "train.crop_size=0", "train.batch_size=4", "train.warmup_steps=2", "wandb.mode=disabled"]


class WritesMarker:
    """Unpickling this calls open(marker, "w"): the file appears if anything unpickles it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """Looks like a TinyBeauty / DDA checkpoint, but one value is a pickled call."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"arch": "tinybeauty", "model_kwargs": {}, "model": {}, "config": {"seed": 0}, "dda": {},
             "optimizer": {}, "payload": WritesMarker(marker)}  # fmt: skip
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory) -> Path:
    from tinybeauty_training import main

    tmp = tmp_path_factory.mktemp("tb_safe")
    root = write_synthetic_pairs(tmp / "pairs", n=8, size=32)
    main([f"data.root={root}", f"output_dir={tmp / 'run'}", "train.epochs=2", *TB_FAST])
    return tmp / "run"


def _readers(evil: Path, tmp: Path, tiny_sd: Path, pairs5: Path) -> dict:
    import dda_amplify
    import dda_training
    import tinybeauty_export
    import tinybeauty_inference
    import tinybeauty_training

    photos = tmp / "photos"
    write_synthetic_pairs(photos, n=1, size=32)
    dda_folder = tmp / "dda_model"
    dda_folder.mkdir()
    os.link(evil, dda_folder / "dda_final.pt")
    return {
        "tinybeauty_inference.py": lambda: tinybeauty_inference.main(
            ["--checkpoint", str(evil), "--input", str(photos / "source"), "--output", str(tmp / "inf")]
        ),
        "tinybeauty_export.py": lambda: tinybeauty_export.main(["--checkpoint", str(evil), "--output", str(tmp / "x")]),
        "tinybeauty_training.py --resume": lambda: tinybeauty_training.main(["--resume", str(evil)]),
        "dda_amplify.py": lambda: dda_amplify.main(
            [
                f"checkpoint={dda_folder}",
                f"input_dir={photos / 'source'}",
                f"output_dir={tmp / 'amp'}",
                "wandb.mode=disabled",
            ]  # fmt: skip
        ),
        "dda_training.py --resume": lambda: dda_training.main(
            ["--resume", str(evil), f"model.pretrained={tiny_sd}", f"data.root={pairs5}"]
        ),
    }


@pytest.mark.parametrize(
    "reader",
    ["tinybeauty_inference.py", "tinybeauty_export.py", "tinybeauty_training.py --resume", "dda_amplify.py",
     "dda_training.py --resume"],
)  # fmt: skip
def test_a_crafted_checkpoint_is_refused_and_never_runs(reader, tmp_path, tiny_sd, pairs5):
    marker = tmp_path / "marker"
    evil = crafted_checkpoint(tmp_path / "evil" / "tinybeauty_best_psnr.pt", marker)
    with pytest.raises(CheckpointError, match=r"refused to load .*\.pt: it needs pickle") as err:
        _readers(evil, tmp_path, tiny_sd, pairs5)[reader]()
    assert "convert_checkpoint.py" in str(err.value)
    assert not marker.exists()


@pytest.mark.slow
def test_the_command_line_says_so_in_one_line_with_exit_code_2(tmp_path):
    marker = tmp_path / "marker"
    evil = crafted_checkpoint(tmp_path / "evil.pt", marker)
    photos = write_synthetic_pairs(tmp_path / "photos", n=1, size=32) / "source"
    result = subprocess.run(
        [sys.executable, str(REPO / "tinybeauty_inference.py"), "--checkpoint", str(evil), "--input", str(photos),
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refused to load") and "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_every_checkpoint_a_smoke_run_writes_loads_without_pickle(tb_run, tiny_sd, pairs5, tmp_path):
    import dda_training

    out = tmp_path / "dda"
    dda_training.main(
        ["amplifier=dda", f"model.pretrained={tiny_sd}", f"data.root={pairs5}", f"output_dir={out}", "train.resolution=32",
         "lora.rank=4", "train.epochs=2", "train.checkpoint_every=1", "train.sample_every=2",
         "diffusion.num_steps=4", "diffusion.strength=0.5", "wandb.mode=disabled"]
    )  # fmt: skip
    written = sorted(tb_run.glob("*.pt")) + sorted(out.glob("*.pt"))
    names = {p.name for p in written}
    assert {"tinybeauty_last.pt", "tinybeauty_final.pt", "dda_checkpoint_epoch_1.pt", "dda_final.pt"} <= names
    for path in written:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert isinstance(state, dict) and "config" in state, path


def _old_format(state: dict) -> dict:
    """What the previous main wrote: Python's and numpy's getstate() tuples, and TinyBeauty's old loss keys."""
    old = dict(state)
    rng = state["rng"]
    old["rng"] = {
        "python": (rng["python"]["version"], tuple(rng["python"]["state"].tolist()), rng["python"]["gauss"]),
        "numpy": (
            "MT19937",
            rng["numpy"]["keys"].numpy().astype(np.uint32),
            rng["numpy"]["pos"],
            rng["numpy"]["has_gauss"],
            rng["numpy"]["cached_gaussian"],
        ),  # fmt: skip
        "torch": rng["torch"],
    }
    old["config"] = {**state["config"], "loss": {"l1_weight": 1.0, "eyeliner_weight": 0.5}}
    return old


@pytest.mark.slow
def test_conversion_round_trips_and_resumes_exactly(tb_run, tmp_path):
    from common import load_checkpoint, set_rng_state
    from convert_checkpoint import main as convert
    from tinybeauty_training import main as train

    current = torch.load(tb_run / "tinybeauty_last.pt", weights_only=True)
    legacy = tmp_path / "legacy.pt"
    torch.save(_old_format(current), legacy)
    with pytest.raises(CheckpointError, match="needs pickle"):
        load_checkpoint(legacy)

    report = convert([str(legacy), str(tmp_path / "converted.pt")])
    assert report["config_changes"] == ["loss.l1_weight -> loss.l1", "loss.eyeliner_weight -> loss.eyeliner"]
    converted = load_checkpoint(tmp_path / "converted.pt")
    for key, tensor in current["model"].items():
        assert torch.equal(converted["model"][key], tensor)
    assert converted["optimizer"]["state"][0]["exp_avg"].equal(current["optimizer"]["state"][0]["exp_avg"])
    assert converted["config"]["loss"] == {"l1": 1.0, "eyeliner": 0.5}

    draws = []
    for state in (current, converted):  # the same RNG streams after restoring either
        set_rng_state(state["rng"])
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
    assert draws[0] == draws[1]

    convert([str(legacy)])  # in place
    load_checkpoint(legacy)
    summary = train(["--resume", str(legacy), "train.epochs=3", f"output_dir={tmp_path / 'resumed'}"])
    assert summary["epochs"] == 3 and summary["completed"]

"""Convert a checkpoint written by an older version of this project into the safe format, once.

    python convert_checkpoint.py runs/tb/tinybeauty_last.pt                 # rewrite in place
    python convert_checkpoint.py old/dda_checkpoint_epoch_100.pt new/dda_checkpoint_epoch_100.pt

Every reader in the project loads checkpoints with `torch.load(weights_only=True)` and refuses a file
that needs pickle (`common.load_checkpoint`). Checkpoints written before that held numpy RNG states,
which need pickle. This command unpickles the file with `weights_only=False`, so it can run any code
the file carries: **run it only on files you trust** (your own runs, or a colleague's you would run
code from). It rewrites the RNG states as tensors, numpy values as tensors and plain numbers, renames
config keys that have since changed, refuses anything else that is not a tensor or a plain value
(naming where it sits), and checks that the result loads with `weights_only=True`. Weights, optimizer
and scheduler states are kept bit for bit, so `--resume` from a converted file continues exactly.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from common import load_checkpoint, log, rng_state_as_tensors, run_cli, save_checkpoint, setup_logging
from errors import CheckpointError

PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.Size)
RENAMED_KEYS = {  # config keys renamed since checkpoints were first written: (section, old) -> new
    ("loss", "l1_weight"): "l1",
    ("loss", "eyeliner_weight"): "eyeliner",
}


def plain(value: Any, where: str) -> Any:
    """`value` made of tensors and plain containers only; anything else raises naming `where`."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, PLAIN):
        return value
    raise CheckpointError(f"cannot convert {where}: it holds a {type(value).__module__}.{type(value).__name__}")


def legacy_rng(rng: dict) -> dict:
    """The old `get_rng_state()` layout (Python's and numpy's getstate() tuples) in the tensor layout."""
    if isinstance(rng.get("python"), dict):
        return rng  # already converted
    return rng_state_as_tensors(rng["python"], rng["numpy"], rng["torch"], rng.get("cuda"))


def migrate_config(config: dict) -> list[str]:
    """Rename config keys that have changed since the checkpoint was written; returns what changed."""
    changes = []
    for (section, old), new in RENAMED_KEYS.items():
        block = config.get(section)
        if isinstance(block, dict) and old in block:
            block[new] = block.pop(old)
            changes.append(f"{section}.{old} -> {section}.{new}")
    weights = config.get("loss", {}).get("region_weights") if isinstance(config.get("loss"), dict) else None
    if isinstance(weights, dict) and "background" in weights:
        weights.pop("background")  # never had an effect on gradients (FGMM keeps the background)
        changes.append("loss.region_weights.background removed")
    return changes


def convert(source: str | Path, output: str | Path | None = None) -> dict:
    """Convert `source` (trusted) and write it to `output` (default: in place, atomically)."""
    source = Path(source)
    output = Path(output) if output else source
    if not source.is_file():
        raise CheckpointError(f"checkpoint not found: {source}")
    try:
        state = torch.load(source, map_location="cpu", weights_only=False)  # the one trusted, explicit unpickle
    except Exception as err:
        raise CheckpointError(f"could not read checkpoint {source}: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} is not a checkpoint of this project (it holds a {type(state).__name__})")
    if isinstance(state.get("rng"), dict):
        state["rng"] = legacy_rng(state["rng"])
    state = plain(state, "checkpoint")
    changes = migrate_config(state["config"]) if isinstance(state.get("config"), dict) else []
    save_checkpoint(state, output)
    load_checkpoint(output)  # the whole point: it now loads without pickle
    return {"source": str(source), "output": str(output), "config_changes": changes}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("checkpoint", help="a .pt file written by this project that you trust")
    parser.add_argument("output", nargs="?", default=None, help="where to write it (default: replace CHECKPOINT)")
    args = parser.parse_args(argv)
    setup_logging()
    report = convert(args.checkpoint, args.output)
    log.info("converted %s -> %s (loads with weights_only=True)%s", report["source"], report["output"],
             "; config: " + ", ".join(report["config_changes"]) if report["config_changes"] else "")  # fmt: skip
    return report


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

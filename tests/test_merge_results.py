"""scripts/merge_results.py: runs side by side, a table of the quoted figures, nothing filled in."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("merge_results", REPO / "scripts" / "merge_results.py")
merge_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(merge_results)


def test_merge_keeps_runs_and_tabulates_only_what_they_hold(tmp_path):
    full = {"dda_on_seeds": {"r2": 0.86, "psnr_db": 35.9}, "amplified_vs_truth": {"r2": 0.68, "lip_change_ratio": 0.9},
            "tinybeauty": {"amplified": {"psnr_db": 33.1}}, "share_of_gap_closed": 0.4}  # fmt: skip
    short = {"dda_on_seeds": {"r2": 0.7}}
    (tmp_path / "a.json").write_text(json.dumps(full))
    (tmp_path / "b.json").write_text(json.dumps(short))
    out = tmp_path / "merged.json"
    merge_results.main([f"on={tmp_path / 'a.json'}", f"off={tmp_path / 'b.json'}", "--out", str(out)])
    merged = json.loads(out.read_text())
    assert merged["runs"]["on"] == full and merged["runs"]["off"] == short
    assert merged["table"]["on"] == {"seeds_r2": 0.86, "seeds_psnr_db": 35.9, "unseen_r2": 0.68,
                                     "unseen_lip_share": 0.9, "tinybeauty_amplified_psnr_db": 33.1,
                                     "share_of_gap_closed": 0.4}  # fmt: skip
    assert merged["table"]["off"] == {"seeds_r2": 0.7}


def test_a_missing_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        merge_results.main([f"x={tmp_path / 'nope.json'}", "--out", str(tmp_path / "m.json")])
    assert "nope.json" in capsys.readouterr().err

"""The documentation holds together: the README's results table matches the JSONs, the README stays a
front door, every relative link lands on a file (and heading) that exists, and every config's
`why: docs/decisions.md#ANCHOR` names a heading of docs/decisions.md."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DECISIONS = REPO / "docs" / "decisions.md"
LINKED_DOCS = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "results" / "experiment_log.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
WHY = re.compile(r"why: docs/decisions\.md#([^\s,;)]+)")


def load_results_table():
    spec = importlib.util.spec_from_file_location("results_table", REPO / "scripts" / "results_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation other than '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", without_code_blocks(path.read_text()), flags=re.M)
    return {github_anchor(heading) for heading in headings}


def test_github_anchor():
    assert github_anchor("dda: lora.target_modules") == "dda-loratarget_modules"
    assert github_anchor("TinyBeauty in a web page (`web/`)") == "tinybeauty-in-a-web-page-web"


def test_readme_results_table_matches_the_jsons():
    table = load_results_table()
    _, block, _ = table.split_readme(README.read_text())
    assert block == table.render_rows(), "stale README results table: run python scripts/results_table.py"
    assert len(block) >= 2 + 10, "the table should carry about ten headline rows"


def test_results_table_check_passes_here_and_flags_a_stale_readme(tmp_path, monkeypatch, capsys):
    script = REPO / "scripts" / "results_table.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

    table = load_results_table()
    stale = tmp_path / "README.md"
    first_row = table.render_rows()[2]
    stale.write_text(README.read_text().replace(first_row, first_row.replace(" | ", " | 0", 1)))
    monkeypatch.setattr(table, "README", stale)
    assert table.main(["--check"]) == 1
    assert first_row in capsys.readouterr().out  # the difference is printed
    assert table.main([]) == 0 and table.main(["--check"]) == 0  # rewriting fixes it


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_relative_links_point_to_files_that_exist(doc):
    assert doc.exists(), doc
    broken = []
    for target in LINK.findall(without_code_blocks(doc.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor in the same page
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve()
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


def test_config_why_pointers_name_headings_of_decisions():
    headings = anchors(DECISIONS)
    pointers = {}
    for config in sorted((REPO / "configs").rglob("*.yaml")):
        for anchor in WHY.findall(config.read_text()):
            pointers.setdefault(anchor, []).append(str(config.relative_to(REPO)))
    assert pointers, "no `why: docs/decisions.md#...` pointer in configs/"
    missing = {anchor: files for anchor, files in pointers.items() if anchor not in headings}
    assert not missing, f"headings missing from docs/decisions.md: {missing}"

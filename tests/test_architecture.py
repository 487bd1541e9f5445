"""The house rules of docs/architecture.md: stage scripts stand on one floor, and the library never climbs up to them.

- a library module (data/, models/, losses/, deploy/, web/ and the shared root modules) imports no stage script;
- a stage script imports no other stage script (what two scripts share is a library module);
- pyproject.toml maps every root module and package, so `pip install -e .` makes all of them importable.
bench/ and tests/ may import stage scripts (bench drives a run through a stage's `main()`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

from tests.conftest import REPO

LIBRARY_ROOT_MODULES = {"common", "errors", "demo_report"}  # shared modules that sit beside the scripts
LIBRARY_PACKAGES = ("data", "models", "losses", "deploy", "web")


def root_modules() -> set[str]:
    return {p.stem for p in REPO.glob("*.py")}


def stage_scripts() -> set[str]:
    return root_modules() - LIBRARY_ROOT_MODULES


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at any depth (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def library_files() -> list[Path]:
    files = [REPO / f"{name}.py" for name in sorted(LIBRARY_ROOT_MODULES)]
    for package in LIBRARY_PACKAGES:
        files += sorted((REPO / package).rglob("*.py"))
    return [f for f in files if "node_modules" not in f.parts]


def test_no_library_module_imports_a_stage_script():
    scripts = stage_scripts()
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_modules(path) & scripts)
        for path in library_files()
        if imported_modules(path) & scripts
    }
    assert not offenders, f"library modules importing stage scripts (move the shared code down a layer): {offenders}"


def test_no_stage_script_imports_another():
    scripts = stage_scripts()
    offenders = {
        name: sorted((imported_modules(REPO / f"{name}.py") & scripts) - {name})
        for name in sorted(scripts)
        if (imported_modules(REPO / f"{name}.py") & scripts) - {name}
    }
    assert not offenders, f"stage scripts importing other stage scripts (share a library module instead): {offenders}"


def test_the_rules_catch_an_offender(tmp_path):
    """The check itself: an import of a stage script, at any depth, is seen."""
    module = tmp_path / "offender.py"
    module.write_text(
        "import json\n\ndef f():\n    from dda_training import main\n    import tinybeauty_export as te\n"
    )
    assert imported_modules(module) & stage_scripts() == {"dda_training", "tinybeauty_export"}


def test_pyproject_maps_every_root_module_and_package():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(setuptools["py-modules"]) == root_modules()
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert set(setuptools["packages"]) == packages


# What each library layer may import (docs/architecture.md): downward only.
LAYERS = {
    "errors": set(),
    "common": {"errors"},
    "demo_report": {"errors", "common"},
    "data": {"errors", "common"},
    "losses": {"errors", "common", "data"},
    "models": {"errors", "common", "data"},
    "deploy": {"errors", "common", "data", "losses", "models"},
    "web": {"errors", "common", "data", "losses", "models", "deploy"},
}


def test_library_imports_go_downward():
    project = set(LAYERS) | {"bench", "tests"} | stage_scripts()
    offenders = {}
    for path in library_files():
        relative = path.relative_to(REPO)
        layer = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        upward = (imported_modules(path) & project) - LAYERS[layer] - {layer}
        if upward:
            offenders[str(relative)] = sorted(upward)
    assert not offenders, f"imports against the layering of docs/architecture.md: {offenders}"

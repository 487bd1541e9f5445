"""The README's gallery (scripts/gallery.py): no older than the shipped styles, compared by file digests."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from deploy.styles import DEFAULT_ROOT, list_styles
from tests.conftest import REPO


def load_gallery():
    spec = importlib.util.spec_from_file_location("gallery", REPO / "scripts" / "gallery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gallery_is_no_older_than_the_shipped_styles():
    styles, _ = list_styles(DEFAULT_ROOT)
    if not styles:
        pytest.skip(f"no shipped style in {DEFAULT_ROOT} yet: nothing for the gallery to show (make_style.py makes "
                    "one, then python scripts/gallery.py)")  # fmt: skip
    gallery = load_gallery()
    reason = gallery.stale(DEFAULT_ROOT, gallery.IMAGE)
    assert reason is None, reason


@pytest.mark.slow
def test_the_script_makes_the_image_and_the_check_sees_a_changed_style(tmp_path):
    from web.page_driver import RED_TINT, stand_in_style

    gallery = load_gallery()
    root, image = tmp_path / "styles", tmp_path / "docs" / "gallery.jpg"
    stand_in_style(root, "red", tint=RED_TINT)
    assert gallery.stale(root, image) is not None  # no gallery yet
    assert gallery.main(["--styles", str(root), "--output", str(image)]) == 0
    record = json.loads(image.with_suffix(".json").read_text())
    assert record["columns"] == ["before", "red"] and record["faces"] == ["AF1.jpg", "AM2.jpg", "CF3.jpg", "CM5.jpg"]
    picture = np.asarray(Image.open(image))
    cell = gallery.CELL
    assert picture.shape[0] > 4 * cell and cell * 2 < picture.shape[1] < cell * 3  # 4 faces, before + 1 style
    left, right = picture[-cell - 4 : -4, 4 : 4 + cell].astype(int), picture[-cell - 4 : -4, 8 + cell : 8 + 2 * cell]
    assert np.abs(right.astype(int) - left).mean() > 3  # the style changed the face
    assert (
        gallery.stale(root, image) is None
        and gallery.main(["--styles", str(root), "--output", str(image), "--check"]) == 0
    )

    (root / "red" / "style.json").write_text(json.dumps({"title": "Red, renamed"}))  # a style changes ...
    assert "red" in gallery.stale(root, image)  # ... and the gallery is stale, by digest (not by file time)
    assert gallery.main(["--styles", str(root), "--output", str(image), "--check"]) == 1
    stand_in_style(root, "second")  # a new style is missing from it too
    gallery.main(["--styles", str(root), "--output", str(image)])
    assert gallery.stale(root, image) is None

"""Shared check that a plot is a real PNG written atomically."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    """``path`` is the only file in its folder, a non-empty PNG of a sensible size."""
    assert path.is_file()
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert 200 <= width <= 5000
    assert 200 <= height <= 5000
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp leftovers

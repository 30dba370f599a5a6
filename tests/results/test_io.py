"""Atomic writes: whole files or nothing, with the usual permissions."""

from __future__ import annotations

import os
import stat

import pytest

from cilkit.results import io


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    path = tmp_path / "a" / "f.json"
    io.atomic_write_json(path, {"x": 1})
    io.atomic_write_json(path, {"x": 2})
    assert path.read_text().strip().endswith("}") and '"x": 2' in path.read_text()
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    io.atomic_write_text(path, "old")

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", boom)
    with pytest.raises(OSError):
        io.atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]

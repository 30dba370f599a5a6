"""What a run tells its user: the files it read, and data problems, in its output and log.txt."""

from __future__ import annotations

import io
from pathlib import Path

from fixtures import write_imagefolder

from cilkit.config import build_config
from cilkit.engine.trainer import Trainer


def _run(tmp_path: Path, data: dict) -> tuple[str, str]:
    cfg = build_config(
        {
            "data": data,
            "scenario": {"initial_increment": 2, "increment": 1},
            "backbone": {"name": "convnet4", "hidden": 8},
            "train": {"epochs": 1},
            "engine": {"progress": "none"},
        }
    )
    out = io.StringIO()
    Trainer(cfg, tmp_path / "run", log=out).fit()
    return out.getvalue(), (tmp_path / "run" / "log.txt").read_text()


def test_header_and_log_name_the_files_read(tmp_path):
    printed, log = _run(tmp_path, {"name": "digits"})
    line = next(x for x in printed.splitlines() if x.startswith("data: "))
    assert "digits.csv.gz" in line and "MD5" in line
    assert line in log


def test_unreadable_files_are_a_one_line_warning_in_the_output_and_the_log(tmp_path):
    root = write_imagefolder(tmp_path / "images")
    (root / "train" / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    printed, log = _run(tmp_path, {"name": "imagefolder", "root": str(root), "image_size": 16})
    expected = f"warning: imagefolder {root}: skipped 1 unreadable image file: train/bee/broken.png"
    warnings = [x for x in printed.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(expected)
    assert warnings[0] in log
    assert f"data: {root}" in printed

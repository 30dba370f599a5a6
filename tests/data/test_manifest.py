"""Manifests of dataset folders: the file, the check before a run, the hash every run records,
and ``cilkit data manifest``."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from fixtures import write_cifar10, write_imagefolder, write_pilot_benchmark

import cilkit.data.datasets  # noqa: F401 - registers the datasets
from cilkit.cli.main import main
from cilkit.config import build_config
from cilkit.config.schema import DataConfig
from cilkit.data import lazy, manifest
from cilkit.data.base import DatasetSplits, create_dataset
from cilkit.data.manifest import (
    attach_manifest,
    check_folder,
    make_manifest,
    read_manifest,
    write_manifest,
)
from cilkit.engine.trainer import Trainer
from cilkit.errors import ConfigError, DatasetError


def load(name: str, root: Path, **kwargs: object) -> DatasetSplits:
    kwargs.setdefault("download", False)
    return create_dataset(DataConfig(name=name, root=str(root), **kwargs))  # type: ignore[arg-type]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = write_imagefolder(tmp_path / "data", per_class=2, test_per_class=1)
    (root / "README").write_text("a dataset\n")
    (root / ".cilkit_cache").mkdir()
    (root / ".cilkit_cache" / "x.npz").write_bytes(b"cache")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"hidden")
    return root


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file whose bytes are hashed."""
    seen: list[str] = []
    sha = manifest._sha256

    def counted(path: Path) -> str:
        seen.append(str(path))
        return sha(path)

    monkeypatch.setattr(manifest, "_sha256", counted)
    return seen


def test_manifest_round_trip_lists_every_file_but_hidden_ones(folder: Path, tmp_path: Path) -> None:
    made = make_manifest(folder)
    paths = [e.path for e in made.entries]
    assert paths == sorted(paths) and "README" in paths and "train/cat/0.png" in paths
    assert not [p for p in paths if "/." in p or p.startswith(".")]
    assert len(paths) == 1 + 3 * (2 + 1) + 3 * 2  # README, images, notes.txt per class folder
    labels = {e.path: e.label for e in made.entries}
    assert labels["train/cat/0.png"] == "cat" and labels["val/bee/0.png"] == "bee"
    assert labels["README"] is None and labels["train/cat/notes.txt"] is None
    out = tmp_path / "m.jsonl"
    write_manifest(made, out)
    header = json.loads(out.read_text().splitlines()[0])
    assert header["format"] == "cilkit-manifest" and header["version"] == 1
    assert header["files"] == len(paths) and header["sha256"] == made.sha256
    assert header["bytes"] == sum(os.path.getsize(folder / p) for p in paths)
    assert read_manifest(out) == made
    assert check_folder(folder, out).sha256 == made.sha256
    inside = folder / "manifest.jsonl"  # a manifest kept in the folder is not one of its files
    write_manifest(make_manifest(folder, exclude=[inside]), inside)
    assert check_folder(folder, inside).sha256 == made.sha256


def test_manifest_hash_depends_on_names_and_contents_only(folder: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    os.utime(copy / "README", (1, 1))
    assert make_manifest(copy).sha256 == make_manifest(folder).sha256
    (copy / "README").write_text("a dataset!\n")
    assert make_manifest(copy).sha256 != make_manifest(folder).sha256


def _one_line(err: pytest.ExceptionInfo[DatasetError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_every_kind_of_mismatch_is_one_line_naming_the_file(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    write_manifest(make_manifest(folder), out)
    start = f"dataset folder {folder} does not match the manifest {out}: "

    (folder / "train" / "ant" / "1.png").rename(tmp_path / "kept.png")
    with pytest.raises(DatasetError) as err:
        check_folder(folder, out)
    assert _one_line(err).startswith(f"{start}train/ant/1.png is missing; restore it")
    (tmp_path / "kept.png").rename(folder / "train" / "ant" / "1.png")

    (folder / "val" / "cat" / "new.png").write_bytes(b"x")
    with pytest.raises(DatasetError) as err:
        check_folder(folder, out)
    assert _one_line(err).startswith(f"{start}val/cat/new.png is not in the manifest; remove it")
    (folder / "val" / "cat" / "new.png").unlink()

    (folder / "README").write_text("a longer text\n")
    with pytest.raises(DatasetError) as err:
        check_folder(folder, out)
    assert _one_line(err).startswith(f"{start}README has 14 bytes, the manifest says 10;")

    (folder / "README").write_text("A dataset\n")  # same size, other bytes
    with pytest.raises(DatasetError) as err:
        check_folder(folder, out)
    assert _one_line(err).startswith(f"{start}README has changed (SHA-256 ")
    assert f"cilkit data manifest {folder} -o {out}" in str(err.value)


def test_sizes_are_checked_before_any_file_is_hashed(
    folder: Path, tmp_path: Path, hashed: list[str]
) -> None:
    out = tmp_path / "m.jsonl"
    write_manifest(make_manifest(folder), out)
    (folder / "val" / "bee" / "0.png").write_bytes(b"short")
    hashed.clear()
    with pytest.raises(DatasetError, match="val/bee/0.png has 5 bytes"):
        check_folder(folder, out)
    assert hashed == []


def test_bad_manifest_files(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    with pytest.raises(DatasetError, match=f"manifest {out} not found; make it with"):
        check_folder(folder, out)
    out.write_text('{"some": "json"}\n')
    with pytest.raises(DatasetError, match="is not a cilkit manifest"):
        read_manifest(out)
    write_manifest(make_manifest(folder), out)
    lines = out.read_text().splitlines()
    row = json.loads(lines[3])
    lines[3] = json.dumps({**row, "size": row["size"] + 1})
    out.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="was edited or cut short"):
        read_manifest(out)
    out.write_text("\n".join(lines[:1] + ["not json"]) + "\n")
    with pytest.raises(DatasetError, match=f"{out}:2: not a manifest line"):
        read_manifest(out)


def test_hashes_are_cached_by_path_size_and_mtime(
    folder: Path, hashed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest, "HASH_CACHE_MIN_BYTES", 0)
    first = make_manifest(folder)
    assert len(hashed) == len(first.entries)
    assert (folder / ".cilkit_cache" / manifest.HASH_CACHE_NAME).is_file()
    hashed.clear()
    assert make_manifest(folder) == first and hashed == []  # only the folder is listed
    os.utime(folder / "README", (5, 5))  # touched: hashed again, alone
    assert make_manifest(folder) == first and hashed == [str(folder / "README")]
    hashed.clear()
    assert make_manifest(folder, rehash=True) == first and len(hashed) == len(first.entries)


def test_small_folders_keep_no_hash_cache(folder: Path) -> None:
    make_manifest(folder)
    assert not (folder / ".cilkit_cache" / manifest.HASH_CACHE_NAME).exists()


# --------------------------------------------------------------------------------------------
# runs: data.manifest is checked before decoding; every run records the hash
# --------------------------------------------------------------------------------------------


def test_image_folder_checks_the_manifest_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    classes = [f"c{i}" for i in range(50)]
    root = write_pilot_benchmark(tmp_path / "vtab", classes, size=24)
    out = tmp_path / "vtab.jsonl"
    write_manifest(make_manifest(root), out)
    ds = load("vtab", root, image_size=72, manifest=str(out))
    assert ds.extra["manifest_sha256"] == read_manifest(out).sha256
    assert ds.extra["manifest_file"] == str(out)

    (root / "test" / "c3" / "0.png").write_bytes(b"")
    decoded: list[str] = []
    monkeypatch.setattr(lazy, "decode_image", lambda *a, **k: decoded.append(a[0]))
    with pytest.raises(DatasetError, match="test/c3/0.png has 0 bytes"):
        load("vtab", root, image_size=72, manifest=str(out))
    assert decoded == []


def test_attach_manifest_records_the_hash_of_any_adapter(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    ds = load("cifar10", tmp_path)
    cfg = DataConfig(name="cifar10", root=str(tmp_path), download=False)
    recorded = attach_manifest(cfg, ds)
    expected = make_manifest(tmp_path / "cifar-10-batches-py").sha256
    assert recorded.extra["manifest_sha256"] == expected
    assert recorded.provenance == f"{ds.provenance}; manifest sha256 {expected}"

    out = tmp_path / "cifar.jsonl"
    write_manifest(make_manifest(tmp_path / "cifar-10-batches-py"), out)
    checked = attach_manifest(DataConfig(name="cifar10", root=str(tmp_path), manifest=str(out)), ds)
    assert checked.provenance.endswith(f"manifest sha256 {expected}, matches {out}")
    (tmp_path / "cifar-10-batches-py" / "extra.txt").write_text("x")
    with pytest.raises(DatasetError, match="extra.txt is not in the manifest"):
        attach_manifest(DataConfig(name="cifar10", root=str(tmp_path), manifest=str(out)), ds)

    digits = create_dataset(DataConfig(name="digits"))
    assert attach_manifest(DataConfig(name="digits"), digits) is digits
    with pytest.raises(ConfigError, match="data.manifest: digits is bundled"):
        attach_manifest(DataConfig(name="digits", manifest=str(out)), digits)


def test_a_run_checks_and_records_the_manifest(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "images")
    out = tmp_path / "images.jsonl"
    write_manifest(make_manifest(root), out)
    sha = read_manifest(out).sha256
    data = {"name": "imagefolder", "root": str(root), "image_size": 16, "manifest": str(out)}
    cfg = build_config(
        {
            "data": data,
            "scenario": {"initial_increment": 2, "increment": 1},
            "backbone": {"name": "convnet4", "hidden": 8},
            "train": {"epochs": 1},
            "engine": {"progress": "none"},
        }
    )
    printed = io.StringIO()
    Trainer(cfg, tmp_path / "run", log=printed).fit()
    line = next(x for x in printed.getvalue().splitlines() if x.startswith("data: "))
    assert line.endswith(f"; manifest sha256 {sha}, matches {out}")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data_manifest_sha256"] == sha


# --------------------------------------------------------------------------------------------
# cilkit data manifest
# --------------------------------------------------------------------------------------------


def test_cli_writes_the_manifest(folder: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "out" / "m.jsonl"
    assert main(["data", "manifest", str(folder), "-o", str(out)]) == 0
    made = read_manifest(out)
    assert made == make_manifest(folder)
    printed = capsys.readouterr()
    assert printed.out.strip() == (
        f"wrote {out}: {len(made.entries):,} files, 0.00 GB, sha256 {made.sha256}"
    )
    assert main(["data", "manifest", str(folder), "-o", str(out)]) == 2
    assert f"error: -o {out} already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["data", "manifest", str(folder), "-o", str(out), "--overwrite", "--rehash"]) == 0

    monkeypatch.chdir(tmp_path)
    assert main(["data", "manifest", str(folder)]) == 0  # default: ./<ROOT name>.manifest.jsonl
    assert read_manifest(tmp_path / "data.manifest.jsonl") == made
    assert main(["data", "manifest", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err

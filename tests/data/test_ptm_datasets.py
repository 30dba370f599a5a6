"""The PTM-CIL benchmark adapters (CUB-200, ImageNet-R/A, ObjectNet, OmniBenchmark, VTAB,
ImageNet-100) on generated folders in each official layout, and the memory-mapped decode cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import (
    class_colors,
    cub_folder_names,
    imagenet_wnids,
    save_image,
    two_tone,
    write_cub_official,
    write_imagefolder,
    write_pilot_benchmark,
)

import cilkit.data.datasets  # noqa: F401 - registers the datasets
from cilkit.config.schema import DataConfig
from cilkit.data import lazy
from cilkit.data.base import DatasetSplits, create_dataset
from cilkit.data.datasets import _folder
from cilkit.data.datasets._ptm import imagenet_names, read_list
from cilkit.data.transforms import PRESETS, BatchTransform
from cilkit.engine.data import DeviceSplit
from cilkit.errors import DatasetError


def load(name: str, root: Path, **kwargs: object) -> DatasetSplits:
    kwargs.setdefault("download", False)
    return create_dataset(DataConfig(name=name, root=str(root), **kwargs))  # type: ignore[arg-type]


def top_colour(images: torch.Tensor, row: int = 1) -> list[tuple[int, ...]]:
    """The colour of each image at (``row``, centre column)."""
    w = images.shape[-1] // 2
    return [tuple(int(v) for v in img[:, row, w]) for img in images]


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every image file decoded in this process (all of them here: fewer than MIN_PARALLEL)."""
    seen: list[str] = []
    decode = lazy.decode_image

    def counted(path: str, size: int, mode: lazy.ResizeMode = "resize") -> np.ndarray:
        seen.append(path)
        return decode(path, size, mode)

    monkeypatch.setattr(lazy, "decode_image", counted)
    return seen


# --------------------------------------------------------------------------------------------
# the benchmarks in LAMDA-PILOT's / APER's train/ + test/ layout
# --------------------------------------------------------------------------------------------

WNIDS_R = imagenet_wnids(200, start=1)
PILOT = {  # name -> (folder under data.root in PILOT / APER, class folder names)
    "imagenet_r": ("imagenet-r", WNIDS_R),
    "imagenet_a": ("imagenet-a", imagenet_wnids(200, start=500)),
    "objectnet": ("objectnet", [f"object_{i:03d}" for i in range(200)]),
    "omnibenchmark": ("omnibenchmark", [f"realm_{i:03d}" for i in range(300)]),
    "vtab": (
        "vtab-cil/vtab",
        [f"{d}_{i}" for d in ("resisc", "dtd", "pets", "euro", "fl") for i in range(10)],
    ),
    "cub200": ("cub", cub_folder_names()),
}


@pytest.mark.parametrize("name", sorted(PILOT))
def test_pilot_layout_class_count_names_labels_pixels(tmp_path: Path, name: str) -> None:
    sub, classes = PILOT[name]
    written = list(reversed(classes))  # written in another order than the sorted class ids
    write_pilot_benchmark(tmp_path / sub, written, per_class=2)
    ds = load(name, tmp_path, image_size=8)  # data.root is the folder above, as in PILOT
    folders = sorted(classes)
    assert ds.num_classes == len(classes) and ds.root == tmp_path / sub
    if name.startswith("imagenet"):
        assert list(ds.train.class_names) == [imagenet_names()[w] for w in folders]
    elif name == "cub200":
        assert ds.train.class_names[:2] == ("Bird name 1", "Bird name 2")
    else:
        assert list(ds.train.class_names) == folders
    assert ds.train.class_counts().tolist() == [2] * len(classes)
    assert ds.test.class_counts().tolist() == [1] * len(classes)
    for split in (ds.train, ds.test):  # each image's colours are its folder's
        expected = [class_colors(written.index(folders[y]))[0] for y in split.labels.tolist()]
        assert top_colour(split.images) == expected
    assert ds.provenance.startswith(f"{tmp_path / sub}/{{train, test}} (")
    assert "LAMDA-PILOT's train/test layout" in ds.provenance
    assert len(ds.extra["manifest_sha256"]) == 64
    # data.root may be the benchmark's folder itself
    assert load(name, tmp_path / sub, image_size=8).num_classes == len(classes)


@pytest.mark.parametrize("name", ["imagenet_r", "omnibenchmark", "vtab"])
def test_wrong_class_count_is_one_line_naming_folder_and_counts(tmp_path: Path, name: str) -> None:
    sub, classes = PILOT[name]
    write_pilot_benchmark(tmp_path / sub, classes[:-1])
    with pytest.raises(DatasetError) as err:
        load(name, tmp_path, image_size=8)
    message = str(err.value)
    assert "\n" not in message
    train = tmp_path / sub / "train"
    assert f"{train} holds {len(classes) - 1} class folders, the benchmark has {len(classes)}" in (
        message
    )


def test_missing_split_and_missing_folder_are_one_line(tmp_path: Path) -> None:
    write_pilot_benchmark(tmp_path / "imagenet-r", WNIDS_R)
    (tmp_path / "imagenet-r" / "test").rename(tmp_path / "imagenet-r" / "held-out")
    with pytest.raises(DatasetError) as err:
        load("imagenet_r", tmp_path, image_size=8)
    assert str(err.value).startswith(f"ImageNet-R: {tmp_path / 'imagenet-r' / 'test'} not found")
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError) as err:
        load("objectnet", tmp_path, image_size=8)
    assert str(err.value).startswith("ObjectNet not found: no train/<class>/ folder in ")
    assert str(tmp_path / "objectnet") in str(err.value) and "\n" not in str(err.value)


def test_test_split_must_hold_the_train_classes(tmp_path: Path) -> None:
    sub, classes = PILOT["vtab"]
    write_pilot_benchmark(tmp_path / sub, classes)
    (tmp_path / sub / "test" / classes[3] / "0.png").unlink()
    (tmp_path / sub / "test" / classes[3] / "notes.txt").unlink()
    (tmp_path / sub / "test" / classes[3]).rmdir()
    with pytest.raises(DatasetError, match=f"same class folders \\(only in train: {classes[3]}\\)"):
        load("vtab", tmp_path, image_size=8)


# --------------------------------------------------------------------------------------------
# CUB-200-2011: the official layout, and which layout wins
# --------------------------------------------------------------------------------------------


def test_cub_official_layout_split_labels_names(tmp_path: Path) -> None:
    written = write_cub_official(tmp_path, per_class=3)
    ds = load("cub200", tmp_path, image_size=16)
    folder = tmp_path / "CUB_200_2011"
    assert ds.root == folder and ds.num_classes == 200
    assert ds.train.class_names[:2] == ("Bird name 1", "Bird name 2")  # classes.txt order
    assert len(ds.train) == 200 and len(ds.test) == 400  # train_test_split.txt
    assert ds.train.labels.tolist() == [c for _, c in written["train"]]
    assert ds.test.labels.tolist() == [c for _, c in written["test"]]
    for split in (ds.train, ds.test):  # JPEG: within a few levels of the colours written
        got = np.array(top_colour(split.images, row=2))
        want = np.array([class_colors(y)[0] for y in split.labels.tolist()])
        assert np.abs(got - want).max() <= 8
    assert "official layout, official train/test split: 200 classes; 200 train images" in (
        ds.provenance
    )
    assert ds.provenance.startswith(f"{folder}/{{images.txt, image_class_labels.txt, ")


def test_cub_layout_detection_and_errors(tmp_path: Path) -> None:
    write_cub_official(tmp_path, per_class=2, size=8)
    write_pilot_benchmark(tmp_path / "cub", cub_folder_names())
    assert "official layout" in load("cub200", tmp_path, image_size=8).provenance
    pilot = load("cub200", tmp_path / "cub", image_size=8)
    assert "LAMDA-PILOT's train/test layout" in pilot.provenance
    assert pilot.train.class_names == load("cub200", tmp_path, image_size=8).train.class_names

    (tmp_path / "CUB_200_2011" / "train_test_split.txt").unlink()
    with pytest.raises(DatasetError, match="CUB-200-2011 is incomplete: .*train_test_split.txt"):
        load("cub200", tmp_path / "CUB_200_2011", image_size=8)
    with pytest.raises(DatasetError) as err:
        load("cub200", tmp_path / "nowhere", image_size=8)
    assert "CUB_200_2011/" in str(err.value) and "cub/{train,test}" in str(err.value)


def test_cub_official_missing_image_and_class_count(tmp_path: Path) -> None:
    write_cub_official(tmp_path, num_classes=200, per_class=2, size=8)
    folder = tmp_path / "CUB_200_2011"
    first = (folder / "images.txt").read_text().split("\n", 1)[0].split(" ", 1)[1]
    (folder / "images" / first).unlink()
    with pytest.raises(DatasetError, match=f"{folder / 'images' / first} \\(listed in images.txt"):
        load("cub200", tmp_path, image_size=8)
    lines = (folder / "classes.txt").read_text().splitlines()
    (folder / "classes.txt").write_text("\n".join(lines[:150]) + "\n")
    with pytest.raises(DatasetError, match="classes.txt lists 150 classes, the dataset has 200"):
        load("cub200", tmp_path, image_size=8)


# --------------------------------------------------------------------------------------------
# ImageNet-100
# --------------------------------------------------------------------------------------------


def test_imagenet100_list_is_ucirs_seed_1993_draw() -> None:
    wnids = read_list("imagenet100_ucir.txt")
    every = list(imagenet_names())
    assert len(every) == 1000 and every == sorted(every)
    np.random.seed(1993)  # hshustc/CVPR19_Incremental_Learning gen_imagenet_subset.py
    assert wnids == sorted(np.random.choice(every, 100, replace=False))
    assert len(set(imagenet_names().values())) == 1000  # names are unique


def test_imagenet100_from_a_full_imagenet_folder(tmp_path: Path) -> None:
    wnids = read_list("imagenet100_ucir.txt")
    others = [w for w in imagenet_wnids(8) if w not in wnids]
    written = others + list(reversed(wnids))
    write_imagefolder(tmp_path, tuple(written), per_class=1, test_per_class=1, size=8)
    ds = load("imagenet100", tmp_path, image_size=8)
    assert ds.num_classes == 100
    assert list(ds.train.class_names) == [imagenet_names()[w] for w in wnids]
    expected = [class_colors(written.index(wnids[y]))[0] for y in ds.test.labels.tolist()]
    assert top_colour(ds.test.images) == expected
    assert f"100 classes of {100 + len(others)} class folders" in ds.provenance

    missing = tmp_path / "val" / wnids[7]
    for f in missing.iterdir():
        f.unlink()
    missing.rmdir()
    with pytest.raises(DatasetError, match=f"ImageNet-100: {missing} not found \\(1 of the 100"):
        load("imagenet100", tmp_path, image_size=8)


# --------------------------------------------------------------------------------------------
# the memory-mapped decode cache
# --------------------------------------------------------------------------------------------


def test_memmap_cache_decodes_once_and_matches_lazy_decoding(
    tmp_path: Path, count_decodes: list[str]
) -> None:
    write_pilot_benchmark(tmp_path, WNIDS_R, per_class=2, size=40)
    first = load("imagenet_r", tmp_path, image_size=72)  # > 64: not in memory, cache auto
    assert len(count_decodes) == 600
    (cache,) = (tmp_path / ".cilkit_cache").glob("imagenet_r-72px-*.u8")
    assert f"into the memory-mapped cache {cache}" in first.provenance
    assert first.train.in_memory and first.train.images.shape == (400, 3, 72, 72)

    count_decodes.clear()
    second = load("imagenet_r", tmp_path, image_size=72)
    assert count_decodes == []  # the second run reads no image file
    assert f"read from the memory-mapped cache {cache}" in second.provenance
    assert torch.equal(second.train.images, first.train.images)
    assert torch.equal(second.test.labels, first.test.labels)
    # the same pixels as the lazy path's evaluation resize, for the same files
    lazy_ds = load("imagenet_r", tmp_path, image_size=72, cache="none")
    assert not lazy_ds.train.in_memory
    some = [0, 3, 399]
    decoded = [lazy.FileImageDataset(lazy_ds.train.paths or (), 72)[i][0] for i in some]
    assert torch.equal(torch.stack(decoded), second.train.images[some])
    assert lazy_ds.train.labels.tolist() == second.train.labels.tolist()


def test_memmap_split_feeds_the_engine_on_cpu(tmp_path: Path) -> None:
    write_pilot_benchmark(tmp_path, PILOT["vtab"][1], size=24)
    ds = load("vtab", tmp_path, image_size=72)
    transform = BatchTransform(ds.mean, ds.std, PRESETS["imagenet"], channels_last=False)
    split = DeviceSplit(ds.train, ds.train.labels, transform, torch.device("cpu"), num_workers=0)
    (batch,) = list(split.eval_batches(torch.arange(len(split)), 64))
    assert tuple(batch.x.shape) == (50, 3, 72, 72) and batch.x.dtype == torch.float32


def test_memmap_cache_when_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pilot_benchmark(tmp_path, PILOT["vtab"][1], size=24)
    assert load("vtab", tmp_path).train.in_memory  # image_size unset: 224, memory-mapped
    explicit = load("vtab", tmp_path, image_size=16, in_memory=False, cache="memmap")
    assert explicit.train.images.shape[-1] == 16 and "memory-mapped" in explicit.provenance
    kept_lazy = load("vtab", tmp_path, image_size=96, in_memory=False)
    assert not kept_lazy.train.in_memory
    assert "no cache (data.in_memory=false)" in kept_lazy.provenance
    monkeypatch.setattr(_folder, "MEMMAP_AUTO_MAX_BYTES", 1000)
    too_big = load("vtab", tmp_path, image_size=80)
    assert not too_big.train.in_memory
    assert "the memmap cache would take" in too_big.provenance
    assert load("vtab", tmp_path, image_size=80, cache="memmap").train.in_memory


def test_memmap_cache_falls_back_to_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_pilot_benchmark(tmp_path / "ro", PILOT["vtab"][1], size=24)
    (root / ".cilkit_cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("CILKIT_CACHE_DIR", str(tmp_path / "user"))
    ds = load("vtab", root, image_size=72)
    (cache,) = (tmp_path / "user").glob("ro-*/vtab-72px-*.u8")
    assert ds.train.in_memory and str(cache) in ds.provenance


def test_memmap_unreadable_files_are_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    classes = PILOT["vtab"][1]
    root = write_pilot_benchmark(tmp_path, classes, per_class=2, size=24)
    broken = root / "train" / classes[0] / "0_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    (root / "test" / classes[5] / "empty.png").write_bytes(b"")
    ds = load("vtab", root, image_size=72)
    assert ds.train.class_counts().tolist() == [2] * 50 and len(ds.test) == 50
    assert "2 unreadable skipped" in ds.provenance
    assert "skipped 2 unreadable image files" in caplog.text
    top = [class_colors(list(classes).index(sorted(classes)[y]))[0] for y in ds.train.labels]
    assert top_colour(ds.train.images, row=4) == top
    with pytest.raises(DatasetError, match=f"unreadable image {broken}"):
        load("vtab", root, image_size=72, on_unreadable="error")


def test_interrupted_cache_write_leaves_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pilot_benchmark(tmp_path, PILOT["vtab"][1], size=24)
    decode, calls = lazy.decode_image, []

    def dies_midway(path: str, size: int, mode: lazy.ResizeMode = "resize") -> np.ndarray:
        calls.append(path)
        if len(calls) == 30:
            raise KeyboardInterrupt
        return decode(path, size, mode)

    monkeypatch.setattr(lazy, "decode_image", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        load("vtab", tmp_path, image_size=72)
    names = [p.name for p in (tmp_path / ".cilkit_cache").iterdir()]
    assert not [n for n in names if n.endswith((".u8", ".tmp"))], names
    monkeypatch.setattr(lazy, "decode_image", decode)
    assert "into the memory-mapped cache" in load("vtab", tmp_path, image_size=72).provenance


KILLED = """
import os, signal, sys
from cilkit.data import lazy
from cilkit.config.schema import DataConfig
from cilkit.data import create_dataset
decode, calls = lazy.decode_image, []
def dies(path, size, mode="resize"):
    calls.append(path)
    if len(calls) == 30:
        os.kill(os.getpid(), signal.SIGKILL)
    return decode(path, size, mode)
lazy.decode_image = dies
create_dataset(DataConfig(name="vtab", root=sys.argv[1], image_size=72))
"""


def test_killed_decode_leaves_no_usable_half_cache(
    tmp_path: Path, count_decodes: list[str]
) -> None:
    write_pilot_benchmark(tmp_path, PILOT["vtab"][1], size=24)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], env=env, check=False)
    assert done.returncode == -9  # SIGKILL, in the middle of writing the cache
    cache_dir = tmp_path / ".cilkit_cache"
    assert not list(cache_dir.glob("*.u8"))  # nothing under the cache's own name
    assert len(list(cache_dir.glob(".vtab-72px-*.u8.*.tmp"))) == 1  # the half-written file
    ds = load("vtab", tmp_path, image_size=72)  # decodes everything again, from scratch
    assert len(count_decodes) == 100 and "into the memory-mapped cache" in ds.provenance
    assert not list(cache_dir.glob("*.tmp"))  # the killed decode's file is cleaned up


def test_truncated_or_foreign_cache_file_is_ignored(
    tmp_path: Path, count_decodes: list[str]
) -> None:
    write_pilot_benchmark(tmp_path, PILOT["vtab"][1], size=24)
    load("vtab", tmp_path, image_size=72)
    (cache,) = (tmp_path / ".cilkit_cache").glob("vtab-72px-*.u8")
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    count_decodes.clear()
    assert "into the memory-mapped cache" in load("vtab", tmp_path, image_size=72).provenance
    assert len(count_decodes) == 100
    cache.write_bytes(b" " * len(data))  # a placeholder header: never read as a cache
    count_decodes.clear()
    load("vtab", tmp_path, image_size=72)
    assert len(count_decodes) == 100


def test_changed_image_gives_a_new_cache(tmp_path: Path, count_decodes: list[str]) -> None:
    classes = PILOT["vtab"][1]
    write_pilot_benchmark(tmp_path, classes, size=24)
    load("vtab", tmp_path, image_size=72)
    save_image(two_tone((0, 0, 0), (0, 0, 0), 24, 24), tmp_path / "train" / classes[0] / "0.png")
    count_decodes.clear()
    ds = load("vtab", tmp_path, image_size=72)
    assert len(count_decodes) == 100  # keyed by the folder's manifest hash: decoded again
    assert len(list((tmp_path / ".cilkit_cache").glob("vtab-72px-*.u8"))) == 2
    label = sorted(classes).index(classes[0])
    assert int(ds.train.images[ds.train.labels.tolist().index(label)].sum()) == 0

"""What every dataset adapter says it read (``DatasetSplits.provenance``), and how unreadable
image files are reported: through ``cilkit.*`` loggers, never as Python warnings."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fixtures import (
    imagenet_wnids,
    make_tar_gz,
    write_cifar10,
    write_cifar100,
    write_cub_official,
    write_fashion_mnist,
    write_imagefolder,
    write_pilot_benchmark,
    write_tiny_imagenet,
)

import cilkit.data.datasets  # noqa: F401 - registers the datasets
from cilkit.config.schema import DataConfig
from cilkit.data.base import DATASETS, DatasetSplits, create_dataset
from cilkit.data.datasets import cifar, fashion_mnist
from cilkit.data.download import file_md5
from cilkit.data.transforms import PRESETS, BatchTransform
from cilkit.engine.data import DeviceSplit

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def load(name: str, root: Path | str, **kwargs: object) -> DatasetSplits:
    kwargs.setdefault("download", False)
    return create_dataset(DataConfig(name=name, root=str(root), **kwargs))  # type: ignore[arg-type]


@pytest.fixture
def no_system_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())


# --------------------------------------------------------------------------------------------
# every registered adapter fills provenance with the folder it actually read
# --------------------------------------------------------------------------------------------


def _digits(tmp_path: Path) -> tuple[dict, str]:
    from importlib import resources

    bundled = resources.files("sklearn.datasets.data") / "digits.csv.gz"
    return {}, str(bundled)


def _fashion(tmp_path: Path) -> tuple[dict, str]:
    write_fashion_mnist(tmp_path / "fashion-mnist")
    return {}, str(tmp_path / "fashion-mnist") + "/{"


def _cifar10(tmp_path: Path) -> tuple[dict, str]:
    write_cifar10(tmp_path)
    return {}, str(tmp_path / "cifar-10-batches-py") + "/{"


def _cifar100(tmp_path: Path) -> tuple[dict, str]:
    write_cifar100(tmp_path)
    return {}, str(tmp_path / "cifar-100-python") + "/{train, test, meta}"


def _tiny(tmp_path: Path) -> tuple[dict, str]:
    folder = write_tiny_imagenet(tmp_path, folder_name="tiny-imagenet-100a")
    return {"image_size": 16}, f"{folder} ("


def _imagefolder(tmp_path: Path) -> tuple[dict, str]:
    write_imagefolder(tmp_path)
    return {"image_size": 16}, f"{tmp_path}/{{train, val}}"


def _pilot(folder: str, classes: list[str]) -> Callable[[Path], tuple[dict, str]]:
    def write(tmp_path: Path) -> tuple[dict, str]:
        write_pilot_benchmark(tmp_path / folder, classes)
        return {"image_size": 8}, f"{tmp_path / folder}/{{train, test}} ("

    return write


def _cub(tmp_path: Path) -> tuple[dict, str]:
    write_cub_official(tmp_path, per_class=2, size=8)
    return {"image_size": 8}, f"{tmp_path / 'CUB_200_2011'}/{{images.txt, "


def _imagenet100(tmp_path: Path) -> tuple[dict, str]:
    from cilkit.data.datasets._ptm import read_list

    write_imagefolder(tmp_path, tuple(read_list("imagenet100_ucir.txt")), 1, 1, 8)
    return {"image_size": 8}, f"{tmp_path}/{{train, val}} (ImageNet-100 of UCIR"


WRITERS: dict[str, Callable[[Path], tuple[dict, str]]] = {
    "digits": _digits,
    "fashion_mnist": _fashion,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "tiny_imagenet": _tiny,
    "imagefolder": _imagefolder,
    "cub200": _cub,
    "imagenet100": _imagenet100,
    "imagenet_r": _pilot("imagenet-r", imagenet_wnids(200)),
    "imagenet_a": _pilot("imagenet-a", imagenet_wnids(200, start=200)),
    "objectnet": _pilot("objectnet", [f"o{i}" for i in range(200)]),
    "omnibenchmark": _pilot("omnibenchmark", [f"o{i}" for i in range(300)]),
    "vtab": _pilot("vtab", [f"v{i}" for i in range(50)]),
}


def test_every_registered_dataset_has_a_provenance_fixture() -> None:
    assert set(DATASETS.names()) == set(WRITERS)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_provenance_names_the_folder_read(
    name: str, tmp_path: Path, no_system_fashion_mnist: None
) -> None:
    kwargs, expected = WRITERS[name](tmp_path)
    ds = load(name, tmp_path, **kwargs)
    assert ds.provenance.startswith(expected), ds.provenance
    assert "\n" not in ds.provenance
    if ds.root is not None:
        assert str(ds.root) in ds.provenance


def test_digits_provenance_names_version_and_md5() -> None:
    import sklearn

    ds = create_dataset(DataConfig(name="digits"))
    bundled = Path(ds.provenance.split(" ", 1)[0])
    assert bundled.name == "digits.csv.gz" and bundled.is_file()
    assert f"scikit-learn {sklearn.__version__}" in ds.provenance
    assert f"MD5 {file_md5(bundled)}" in ds.provenance


# --------------------------------------------------------------------------------------------
# Fashion-MNIST: MD5s and the fallback to Debian's copy
# --------------------------------------------------------------------------------------------


def test_fashion_mnist_md5_match_and_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_system_fashion_mnist: None
) -> None:
    write_fashion_mnist(tmp_path)
    # fixture files are not the official ones: said clearly, and the load still works
    ds = load("fashion_mnist", tmp_path)
    listed = ", ".join(FASHION_FILES)
    assert ds.provenance.startswith(f"{tmp_path}/{{{listed}}} (MD5 differs from the official")
    for name in FASHION_FILES:
        assert f"{name} (MD5 {file_md5(tmp_path / name)})" in ds.provenance
    assert "holds no copy" not in ds.provenance  # found under data.root

    # the same files, taken as official
    files = {
        k: (stem, file_md5(tmp_path / f"{stem}.gz")) for k, (stem, _) in fashion_mnist.FILES.items()
    }
    monkeypatch.setattr(fashion_mnist, "FILES", files)
    ds = load("fashion_mnist", tmp_path)
    assert ds.provenance == f"{tmp_path}/{{{listed}}} (MD5 of all four match the official files)"


def test_fashion_mnist_fallback_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "usr-share"
    write_fashion_mnist(system)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", (system,))
    (tmp_path / "empty").mkdir()
    ds = load("fashion_mnist", tmp_path / "empty")
    assert ds.provenance.startswith(f"{system}/{{")
    assert f"data.root '{tmp_path / 'empty'}' holds no copy" in ds.provenance
    assert "Debian's dataset-fashion-mnist" in ds.provenance


@pytest.mark.skipif(
    not all((SYSTEM_FASHION_MNIST / f).is_file() for f in FASHION_FILES),
    reason="dataset-fashion-mnist not installed",
)
def test_fashion_mnist_empty_root_falls_back_to_debian(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()  # data.root 'data': an empty folder
    ds = load("fashion_mnist", "data")
    assert ds.root == SYSTEM_FASHION_MNIST and len(ds.train) == 60000
    assert ds.provenance.startswith(f"{SYSTEM_FASHION_MNIST}/{{{', '.join(FASHION_FILES)}}} (")
    # Debian stores the official data in rewritten gzip wrappers: the data's MD5s are checked
    assert "MD5 of all four match the official files" in ds.provenance
    assert "differs from the official file" not in ds.provenance
    assert f"data.root 'data' ({tmp_path / 'data'}) holds no copy" in ds.provenance
    assert "Debian's dataset-fashion-mnist" in ds.provenance


# --------------------------------------------------------------------------------------------
# CIFAR: batch files against the official MD5s, archive extraction
# --------------------------------------------------------------------------------------------


def test_cifar10_provenance_md5s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    ds = load("cifar10", tmp_path)
    assert ds.provenance.startswith(f"{folder}/{{{', '.join(names)}}} (MD5 differs from the")
    assert f"test_batch (MD5 {file_md5(folder / 'test_batch')})" in ds.provenance

    official = {n: file_md5(folder / n) for n in names}
    del official["batches.meta"]
    monkeypatch.setattr(cifar, "CIFAR10_FILE_MD5", official)
    ds = load("cifar10", tmp_path)
    assert "MD5 matches the official file: data_batch_1, " in ds.provenance
    assert "MD5 not checked: batches.meta (no official MD5 known)" in ds.provenance
    assert "differs" not in ds.provenance


def test_cifar100_extracted_from_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar100(tmp_path / "src")
    (tmp_path / "root").mkdir()
    archive = tmp_path / "root" / "cifar-100-python.tar.gz"
    make_tar_gz(tmp_path / "src" / "cifar-100-python", archive)
    monkeypatch.setattr(cifar, "CIFAR100_MD5", file_md5(archive))
    folder = tmp_path / "src" / "cifar-100-python"
    monkeypatch.setattr(
        cifar, "CIFAR100_FILE_MD5", {n: file_md5(folder / n) for n in ("train", "test", "meta")}
    )
    ds = load("cifar100", tmp_path / "root")
    assert ds.provenance == (
        f"{tmp_path / 'root' / 'cifar-100-python'}/{{train, test, meta}} (MD5 of all three match "
        f"the official files; extracted from {archive}, whose MD5 matches the official archive)"
    )
    again = load("cifar100", tmp_path / "root")  # already extracted: nothing to say about it
    assert again.provenance.endswith(
        "{train, test, meta} (MD5 of all three match the official files)"
    )


# --------------------------------------------------------------------------------------------
# decoded folders: counts and the decode cache
# --------------------------------------------------------------------------------------------


def test_tiny_imagenet_provenance_says_whether_the_cache_was_used(tmp_path: Path) -> None:
    folder = write_tiny_imagenet(tmp_path, per_class=3, val_per_class=2)
    first = load("tiny_imagenet", tmp_path, image_size=16)
    (cache,) = (tmp_path / ".cilkit_cache").glob("*.npz")
    assert first.provenance == (
        f"{folder} (3 classes from wnids.txt, 9 train images and 6 val images; decoded at 16px "
        f"from the image files, cached in {cache})"
    )
    second = load("tiny_imagenet", tmp_path, image_size=16)
    assert f"decoded at 16px, read from the cache {cache}" in second.provenance


def test_imagefolder_provenance_counts_and_cache(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, per_class=3, test_per_class=2)
    first = load("imagefolder", tmp_path, image_size=16)
    (cache,) = (tmp_path / ".cilkit_cache").glob("*.npz")
    assert first.provenance == (
        f"{tmp_path}/{{train, val}} (3 classes; 9 image files in train, 6 image files in val; "
        f"decoded at 16px (centre crop) from the image files, cached in {cache})"
    )
    second = load("imagefolder", tmp_path, image_size=16)
    assert f"read from the cache {cache}" in second.provenance
    lazy = load("imagefolder", tmp_path, image_size=16, in_memory=False)
    assert lazy.provenance.startswith(f"{tmp_path}/{{train, val}} (3 classes; 9 image files")
    assert "decoded lazily at 16px" in lazy.provenance


def test_md5_note_wording() -> None:
    from cilkit.data.datasets._common import Md5Check, md5_note

    assert md5_note([Md5Check("a", "1", "1")]) == "MD5 matches the official file"
    assert md5_note([Md5Check("a", "1", "1"), Md5Check("b", "2", "2")]) == (
        "MD5 of both match the official files"
    )
    assert md5_note([Md5Check("a.gz", "1", "9", data_matches=True)]).startswith(
        "MD5 matches the official file once decompressed"
    )
    mixed = md5_note([Md5Check("a", "1", "1"), Md5Check("b", "2", "3"), Md5Check("c", "4")])
    assert mixed == (
        "MD5 matches the official file: a; MD5 differs from the official file: b (MD5 2); "
        "MD5 not checked: c (no official MD5 known)"
    )


# --------------------------------------------------------------------------------------------
# unreadable files: one log record on a cilkit logger, no Python warning
# --------------------------------------------------------------------------------------------


def _break(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return path


def test_imagefolder_in_memory_unreadable_is_logged_not_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_imagefolder(tmp_path)
    for name in ("a_broken.png", "b_broken.png", "c_broken.png", "d_broken.png"):
        _break(tmp_path / "train" / "bee" / name)
    _break(tmp_path / "val" / "ant" / "e_broken.png")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        ds = load("imagefolder", tmp_path, image_size=16, on_unreadable="skip")
    assert not caught, [str(w.message) for w in caught]
    (record,) = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert record.name.startswith("cilkit.") and record.levelno == logging.WARNING
    assert record.name == "cilkit.data.datasets.imagefolder"
    assert record.getMessage() == (
        f"imagefolder {tmp_path}: skipped 5 unreadable image files, e.g. "
        "train/bee/a_broken.png (UnidentifiedImageError: cannot identify image file), "
        "train/bee/b_broken.png, train/bee/c_broken.png"
    )
    assert ds.train.class_counts().tolist() == [3, 3, 3]
    assert "5 unreadable skipped" in ds.provenance


def _lazy_split(root: Path, on_unreadable: str, num_workers: int) -> DeviceSplit:
    data = load("imagefolder", root, image_size=16, in_memory=False)
    transform = BatchTransform(data.mean, data.std, PRESETS["imagenet"], channels_last=False)
    return DeviceSplit(
        data.train,
        data.train.labels,
        transform,
        torch.device("cpu"),
        num_workers=num_workers,
        on_unreadable=on_unreadable,
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_lazy_unreadable_logged_once_per_pass_in_the_main_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, num_workers: int
) -> None:
    write_imagefolder(tmp_path, per_class=2, size=16)
    bad = [_break(tmp_path / "train" / "cat" / f"{c}_broken.png") for c in "wxyz"]
    split = _lazy_split(tmp_path, "skip", num_workers)
    everything = torch.arange(len(split))
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        # batches of 4: 4 + 4 + 2, so no last batch of one sample is dropped
        batches = list(split.train_batches(everything, 4, torch.Generator().manual_seed(0)))
        assert sum(len(b.y) for b in batches) == len(split) == 10
        records = [r for r in caplog.records if "unreadable" in r.getMessage()]
        assert len(records) == 1  # one per pass, not one per image
        (record,) = records
        assert record.name == "cilkit.engine.data" and record.levelno == logging.WARNING
        train = tmp_path / "train"
        assert record.getMessage() == (
            f"decoding {train}: replaced 4 unreadable image files by zero images "
            "(data.on_unreadable=skip), e.g. cat/w_broken.png (UnidentifiedImageError: cannot "
            "identify image file), cat/x_broken.png, cat/y_broken.png"
        )
        # the same files on the next passes are not reported again
        list(split.eval_batches(everything, 4))
        list(split.train_batches(everything, 4, torch.Generator().manual_seed(1)))
        assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1
    assert not caught, [str(w.message) for w in caught]
    # zero images where the files were unreadable
    pos = [split.split.paths.index(str(p)) for p in bad]  # type: ignore[union-attr]
    raw = torch.cat([x for x, _ in split._uint8_batches([torch.tensor(pos)])])
    assert int(raw.sum()) == 0


def test_lazy_unreadable_error_stops_with_the_path(tmp_path: Path) -> None:
    from cilkit.errors import DatasetError

    write_imagefolder(tmp_path, per_class=2, size=16)
    bad = _break(tmp_path / "train" / "cat" / "broken.png")
    split = _lazy_split(tmp_path, "error", 0)
    with pytest.raises(DatasetError, match=f"cannot decode image {bad}"):
        list(split.eval_batches(torch.arange(len(split)), 4))

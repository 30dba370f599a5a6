"""Dataset adapters on tiny fixtures in the official formats (and, marked slow, on real data)."""

from __future__ import annotations

import gzip
import io
import logging
import pickle
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import (
    CIFAR10_NAMES,
    CIFAR100_COARSE_NAMES,
    cifar100_fine_names,
    class_colors,
    idx_bytes,
    make_tar_gz,
    save_image,
    two_tone,
    write_cifar10,
    write_cifar100,
    write_fashion_mnist,
    write_imagefolder,
    write_malicious_pickle,
    write_tiny_imagenet,
)

import cilkit.data.datasets  # noqa: F401 - registers the datasets
from cilkit.config.schema import DataConfig
from cilkit.data.base import DATASETS, DatasetSplits, create_dataset
from cilkit.data.datasets import cifar, fashion_mnist, tiny_imagenet
from cilkit.data.download import download_url, extract_archive, file_md5
from cilkit.data.lazy import FileImageDataset, decode_image, decode_images
from cilkit.errors import ConfigError, DatasetError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED_DATA.is_dir():
    SHARED_DATA = Path("/work/shared/data")
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def load(name: str, root: Path | str, **kwargs: object) -> DatasetSplits:
    kwargs.setdefault("download", False)
    return create_dataset(DataConfig(name=name, root=str(root), **kwargs))  # type: ignore[arg-type]


def check_splits(ds: DatasetSplits, shape: tuple[int, int, int], num_classes: int) -> None:
    """Invariants every in-memory adapter must hold."""
    assert ds.num_classes == num_classes
    for split in (ds.train, ds.test):
        assert split.images is not None
        assert split.images.dtype == torch.uint8
        assert split.images.is_contiguous()
        assert tuple(split.images.shape[1:]) == shape
        assert split.labels.dtype == torch.int64
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) < num_classes
        assert len(split.class_names) == num_classes
    assert len(ds.mean) == len(ds.std) == shape[0]
    assert all(0 <= m <= 1 for m in ds.mean) and all(0 < s <= 1 for s in ds.std)


@pytest.fixture
def no_system_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide /usr/share/datasets/fashion-mnist so 'missing' is missing on every machine."""
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def test_all_datasets_registered_with_descriptions() -> None:
    names = {"digits", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "imagefolder"}
    assert names <= set(DATASETS.names())
    for name in names:
        desc = DATASETS.get(name).description
        assert desc and "\n" not in desc


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def test_digits_real_bundled() -> None:
    from sklearn.datasets import load_digits

    ds = create_dataset(DataConfig(name="digits"))
    check_splits(ds, (1, 8, 8), 10)
    assert len(ds.train) + len(ds.test) == 1797
    assert len(ds.test) == 450
    assert ds.preset == "digits" and ds.train.class_names == tuple("0123456789")
    # stratified: every class has about 25% of its images in the test split
    total = ds.train.class_counts() + ds.test.class_counts()
    frac = ds.test.class_counts().double() / total.double()
    assert torch.all((frac - 0.25).abs() < 0.02)
    # values 0..16 -> round(v * 255 / 16): the images are exactly scikit-learn's, rescaled
    sk = load_digits()
    expected = {np.rint(img * 255 / 16).astype(np.uint8).tobytes() for img in sk.images}
    assert all(img[0].numpy().tobytes() in expected for img in ds.test.images[:50])
    assert int(ds.train.images.max()) == 255
    # deterministic split and statistics
    again = create_dataset(DataConfig(name="digits"))
    assert torch.equal(again.train.images, ds.train.images)
    assert torch.equal(again.test.labels, ds.test.labels)
    assert ds.mean == again.mean and 0.2 < ds.mean[0] < 0.4


# --------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subdir", ["fashion-mnist", ""])
def test_fashion_mnist_fixture(tmp_path: Path, subdir: str, no_system_fashion_mnist: None) -> None:
    written = write_fashion_mnist(tmp_path / subdir if subdir else tmp_path)
    ds = load("fashion_mnist", tmp_path)
    check_splits(ds, (1, 28, 28), 10)
    assert ds.preset == "mnist" and ds.mean == (0.2860,) and ds.std == (0.3530,)
    assert ds.train.class_names[0] == "T-shirt/top" and ds.train.class_names[9] == "Ankle boot"
    assert np.array_equal(ds.train.images[:, 0].numpy(), written["train_x"])
    assert np.array_equal(ds.test.labels.numpy(), written["test_y"])
    # a known pixel at a known (row, column) survives
    assert int(ds.test.images[3, 0, 5, 17]) == int(written["test_x"][3, 5, 17])
    assert ds.root == (tmp_path / subdir if subdir else tmp_path)


def test_fashion_mnist_missing(tmp_path: Path, no_system_fashion_mnist: None) -> None:
    with pytest.raises(DatasetError) as err:
        load("fashion_mnist", tmp_path / "nowhere")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "nowhere" / "fashion-mnist") in msg
    assert "train-images-idx3-ubyte.gz" in msg
    assert "data.download=true" in msg and fashion_mnist.URL in msg


def test_fashion_mnist_truncated_and_bad_magic(
    tmp_path: Path, no_system_fashion_mnist: None
) -> None:
    write_fashion_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # truncated gzip stream
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz"):
        load("fashion_mnist", tmp_path)
    # a complete gzip of a truncated IDX payload
    full = gzip.decompress(raw)
    path.write_bytes(gzip.compress(full[:-100]))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz.*truncated"):
        load("fashion_mnist", tmp_path)
    # wrong magic number (labels file used as images)
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    with pytest.raises(DatasetError, match="magic"):
        load("fashion_mnist", tmp_path)


def test_fashion_mnist_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_system_fashion_mnist: None
) -> None:
    host = tmp_path / "host"
    write_fashion_mnist(host)
    files = {
        key: (stem, file_md5(host / f"{stem}.gz")) for key, (stem, _) in fashion_mnist.FILES.items()
    }
    monkeypatch.setattr(fashion_mnist, "FILES", files)
    monkeypatch.setattr(fashion_mnist, "URL", host.as_uri() + "/")
    ds = load("fashion_mnist", tmp_path / "data", download=True)
    assert len(ds.train) == 20
    assert (tmp_path / "data" / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()

    monkeypatch.setattr(fashion_mnist, "URL", (tmp_path / "offline").as_uri() + "/")
    with pytest.raises(DatasetError, match="could not download .*; put the files at"):
        load("fashion_mnist", tmp_path / "other", download=True)


def test_fashion_mnist_found_at_system_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    system = tmp_path / "usr-share"
    write_fashion_mnist(system, n_train=10, n_test=10)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", (system,))
    ds = load("fashion_mnist", tmp_path / "empty-root")
    assert ds.root == system and len(ds.train) == 10


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_cifar10_fixture(tmp_path: Path, style: str) -> None:
    written = write_cifar10(tmp_path, per_class=3, test_per_class=2, style=style)
    ds = load("cifar10", tmp_path)
    check_splits(ds, (3, 32, 32), 10)
    assert ds.preset == "cifar" and ds.mean == cifar.CIFAR10_MEAN
    assert ds.train.class_names == tuple(CIFAR10_NAMES)
    assert ds.train.class_counts().tolist() == [3] * 10
    assert ds.test.class_counts().tolist() == [2] * 10
    assert np.array_equal(ds.train.images.numpy(), written["train_x"])
    assert np.array_equal(ds.train.labels.numpy(), written["train_y"])
    assert np.array_equal(ds.test.images.numpy(), written["test_x"])
    assert ds.root == tmp_path / "cifar-10-batches-py"


def test_cifar_pixel_layout(tmp_path: Path) -> None:
    """Rows of 3072 bytes are the R, G, B planes, each 32 rows of 32 pixels."""
    write_cifar10(tmp_path, per_class=1)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    batch["data"] = batch["data"].copy()
    batch["data"][4] = 0
    batch["data"][4, 1024 + 32 * 5 + 7] = 201  # green, row 5, column 7
    batch["data"][4, 2048 + 32 * 30 + 1] = 99  # blue, row 30, column 1
    path.write_bytes(pickle.dumps(batch, protocol=2))
    img = load("cifar10", tmp_path).test.images[4]
    assert int(img[1, 5, 7]) == 201 and int(img[2, 30, 1]) == 99
    assert int(img.sum()) == 300


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_cifar100_fixture_with_coarse_labels(tmp_path: Path, style: str) -> None:
    written = write_cifar100(tmp_path, per_class=2, test_per_class=1, style=style)
    ds = load("cifar100", tmp_path)
    check_splits(ds, (3, 32, 32), 100)
    assert ds.preset == "cifar" and ds.mean == cifar.CIFAR100_MEAN
    assert ds.train.class_names == tuple(cifar100_fine_names())
    assert ds.train.class_counts().tolist() == [2] * 100
    assert np.array_equal(ds.train.images.numpy(), written["train_x"])
    assert np.array_equal(ds.test.labels.numpy(), written["test_y"])
    coarse = ds.extra["coarse_labels"]
    assert set(coarse) == {"train", "test"}
    assert coarse["train"].dtype == torch.int64
    assert np.array_equal(coarse["train"].numpy(), written["train_coarse"])
    assert torch.equal(coarse["test"], ds.test.labels // 5)
    assert ds.extra["coarse_class_names"] == tuple(CIFAR100_COARSE_NAMES)


def test_cifar_root_may_be_the_batches_folder(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    ds = load("cifar10", tmp_path / "cifar-10-batches-py")
    assert len(ds.train) == 20


@pytest.mark.parametrize(
    ("name", "folder", "url"),
    [
        ("cifar10", "cifar-10-batches-py", cifar.CIFAR10_URL),
        ("cifar100", "cifar-100-python", cifar.CIFAR100_URL),
    ],
)
def test_cifar_missing(tmp_path: Path, name: str, folder: str, url: str) -> None:
    with pytest.raises(DatasetError) as err:
        load(name, tmp_path / "data")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "data" / folder) in msg
    assert "data.root" in msg and "data.download=true" in msg and url in msg


def test_cifar_incomplete(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="incomplete.*data_batch_3"):
        load("cifar10", tmp_path)


def test_cifar_truncated_pickle(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="data_batch_2.*truncated"):
        load("cifar10", tmp_path)
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="data_batch_2"):
        load("cifar10", tmp_path)


def test_cifar_malicious_pickle_refused(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    marker = tmp_path / "pwned"
    write_malicious_pickle(tmp_path / "cifar-100-python" / "train", marker)
    with pytest.raises(DatasetError) as err:
        load("cifar100", tmp_path)
    assert "refusing" in str(err.value) and "system" in str(err.value)
    assert str(tmp_path / "cifar-100-python" / "train") in str(err.value)
    assert not marker.exists()


def test_cifar_archive_extract_download_and_md5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    written = write_cifar10(src)
    archive = make_tar_gz(src / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    md5 = file_md5(archive)
    monkeypatch.setattr(cifar, "CIFAR10_URL", archive.as_uri())

    # download=true fetches the archive, checks its MD5 and extracts it
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5)
    ds = load("cifar10", tmp_path / "dl", download=True)
    assert np.array_equal(ds.test.images.numpy(), written["test_x"])
    assert (tmp_path / "dl" / "cifar-10-python.tar.gz").is_file()

    # an archive already in root is extracted even with download=false
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "cifar-10-python.tar.gz").write_bytes(archive.read_bytes())
    assert len(load("cifar10", tmp_path / "local").train) == 20

    # MD5 mismatch of a downloaded file: refused, nothing left behind
    monkeypatch.setattr(cifar, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(DatasetError, match="MD5"):
        load("cifar10", tmp_path / "bad", download=True)
    assert not (tmp_path / "bad" / "cifar-10-python.tar.gz").exists()

    # MD5 mismatch of an archive the user put in root
    (tmp_path / "bad" / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(DatasetError, match=r"cifar-10-python\.tar\.gz has MD5 .* expected 0{32}"):
        load("cifar10", tmp_path / "bad")

    # offline: one line naming the URL and where to put the file
    monkeypatch.setattr(cifar, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DatasetError) as err:
        load("cifar10", tmp_path / "offline", download=True)
    msg = str(err.value)
    assert msg.startswith("could not download http://127.0.0.1:9/cifar-10-python.tar.gz (")
    assert str(tmp_path / "offline" / "cifar-10-python.tar.gz") in msg


# --------------------------------------------------------------------------------------------
# download helpers
# --------------------------------------------------------------------------------------------


def test_download_url_file_and_md5(tmp_path: Path) -> None:
    src = tmp_path / "payload.bin"
    src.write_bytes(b"x" * 3000)
    dest = download_url(src.as_uri(), tmp_path / "out" / "p.bin", md5=file_md5(src))
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(DatasetError, match="MD5"):
        download_url(src.as_uri(), tmp_path / "out2" / "p.bin", md5="f" * 32)
    assert list((tmp_path / "out2").iterdir()) == []  # no partial file left


def _tar_with(path: Path, name: str, data: bytes = b"evil") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("member", ["../escape.txt", "/tmp/abs.txt", "ok/../../escape.txt"])
def test_extract_refuses_path_traversal(tmp_path: Path, member: str) -> None:
    tar = _tar_with(tmp_path / "a.tar.gz", member)
    with pytest.raises(DatasetError, match="unsafe member"):
        extract_archive(tar, tmp_path / "out")
    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(member, b"evil")
    with pytest.raises(DatasetError, match="unsafe member"):
        extract_archive(zpath, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_extract_refuses_links_and_truncated(tmp_path: Path) -> None:
    tar = tmp_path / "link.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        info = tarfile.TarInfo("x/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DatasetError, match="links"):
        extract_archive(tar, tmp_path / "out")

    good = tmp_path / "src"
    (good / "d").mkdir(parents=True)
    (good / "d" / "f.bin").write_bytes(np.random.default_rng(0).bytes(200_000))
    archive = make_tar_gz(good / "d", tmp_path / "d.tar.gz")
    assert (extract_archive(archive, tmp_path / "ok") / "d" / "f.bin").is_file()
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"d\.tar\.gz.*truncated"):
        extract_archive(archive, tmp_path / "out2")


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet
# --------------------------------------------------------------------------------------------

WNIDS = ("n01443537", "n01629819", "n01641577")


def test_tiny_imagenet_fixture(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path, wnids=WNIDS, per_class=3, val_per_class=2)
    ds = load("tiny_imagenet", tmp_path)
    check_splits(ds, (3, 64, 64), 3)
    assert ds.preset == "tiny_imagenet"
    assert ds.train.class_names == ("thing 0", "thing 1", "thing 2")  # first synonym
    assert ds.train.class_counts().tolist() == [3, 3, 3]
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.test.labels.tolist() == [0, 1, 2, 0, 1, 2]  # from val_annotations.txt
    for split in (ds.train, ds.test):
        for img, y in zip(split.images, split.labels, strict=True):
            top, bottom = class_colors(int(y))
            assert np.abs(img[:, 10, 20].numpy().astype(int) - top).max() <= 6
            assert np.abs(img[:, 50, 40].numpy().astype(int) - bottom).max() <= 6
    assert ds.root == tmp_path / "tiny-imagenet-200"


def test_tiny_imagenet_resize_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tiny_imagenet(tmp_path, wnids=WNIDS)
    first = load("tiny_imagenet", tmp_path, image_size=32)
    check_splits(first, (3, 32, 32), 3)
    top, bottom = class_colors(int(first.train.labels[0]))
    assert np.abs(first.train.images[0, :, 5, 16].numpy().astype(int) - top).max() <= 6
    assert np.abs(first.train.images[0, :, 26, 16].numpy().astype(int) - bottom).max() <= 6
    caches = list((tmp_path / ".cilkit_cache").glob("tiny_imagenet-*-32px-*.npz"))
    assert len(caches) == 1

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tiny_imagenet, "decode_images", no_decoding)
    second = load("tiny_imagenet", tmp_path, image_size=32)
    assert torch.equal(second.train.images, first.train.images)
    assert torch.equal(second.test.labels, first.test.labels)
    # another size is another cache entry
    with pytest.raises(AssertionError, match="cache"):
        load("tiny_imagenet", tmp_path, image_size=16)


def test_tiny_imagenet_unwritable_cache_is_skipped(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path, wnids=WNIDS)
    (tmp_path / ".cilkit_cache").write_text("a file where the cache folder should be")
    ds = load("tiny_imagenet", tmp_path, image_size=16)
    assert tuple(ds.train.images.shape) == (9, 3, 16, 16)


def test_tiny_imagenet_layouts(tmp_path: Path) -> None:
    # a 100-class-style subset folder name, root pointing at the folder itself, extra val wnid
    folder = write_tiny_imagenet(
        tmp_path, folder_name="tiny-imagenet-100a", wnids=WNIDS[:2], extra_val_wnid="n09999999"
    )
    by_parent = load("tiny_imagenet", tmp_path)
    by_folder = load("tiny_imagenet", folder)
    assert by_parent.num_classes == by_folder.num_classes == 2
    assert len(by_parent.test) == 4  # the val image of an unlisted wnid is left out
    assert torch.equal(by_parent.test.images, by_folder.test.images)
    # two candidate folders: ambiguous
    write_tiny_imagenet(tmp_path, folder_name="tiny-imagenet-100b", wnids=WNIDS[2:])
    with pytest.raises(DatasetError, match="several Tiny-ImageNet folders"):
        load("tiny_imagenet", tmp_path)


def test_tiny_imagenet_missing_and_incomplete(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load("tiny_imagenet", tmp_path / "void")
    msg = str(err.value)
    assert str(tmp_path / "void" / "tiny-imagenet-200") in msg
    assert "data.download=true" in msg and tiny_imagenet.URL in msg

    folder = write_tiny_imagenet(tmp_path, wnids=WNIDS)
    (folder / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DatasetError, match="val_annotations.txt is missing"):
        load("tiny_imagenet", tmp_path)
    (folder / "wnids.txt").write_text("n01443537\nn00000042\n")
    with pytest.raises(DatasetError, match=r"train/n00000042/images is missing"):
        load("tiny_imagenet", tmp_path)


def test_tiny_imagenet_corrupt_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_tiny_imagenet(tmp_path, wnids=WNIDS)
    bad = folder / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated JPEG
    with pytest.raises(DatasetError, match=f"unreadable image {bad}"):
        load("tiny_imagenet", tmp_path, on_unreadable="error")
    with caplog.at_level(logging.WARNING, logger="cilkit"):
        ds = load("tiny_imagenet", tmp_path, on_unreadable="skip")
    assert [r.name for r in caplog.records] == ["cilkit.data.datasets.tiny_imagenet"]
    assert "skipped 1 unreadable image file: " in caplog.records[0].getMessage()
    assert ds.train.class_counts().tolist() == [3, 2, 3]
    assert "1 unreadable skipped" in ds.provenance


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------


def test_imagefolder_in_memory(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, classes=("cat", "ant", "bee"), size=16)
    ds = load("imagefolder", tmp_path, image_size=16)
    check_splits(ds, (3, 16, 16), 3)
    assert ds.preset == "imagenet" and ds.train.in_memory
    assert ds.train.class_names == ("ant", "bee", "cat")  # sorted folder names
    assert ds.train.class_counts().tolist() == [3, 3, 3]
    assert ds.test.class_counts().tolist() == [2, 2, 2]
    written_index = {"cat": 0, "ant": 1, "bee": 2}
    for img, y in zip(ds.train.images, ds.train.labels, strict=True):
        expected = two_tone(*class_colors(written_index[ds.train.class_names[int(y)]]), 16, 16)
        assert np.array_equal(img.permute(1, 2, 0).numpy(), expected)  # PNG: exact round trip
    assert list((tmp_path / ".cilkit_cache").glob("imagefolder-16px-*.npz"))


def test_imagefolder_resize_center_crop_and_test_folder(tmp_path: Path) -> None:
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = (255, 0, 0)  # left quarter red: cropped away
    wide[:, 10:30] = (0, 255, 0)
    for split in ("train", "test"):
        save_image(wide, tmp_path / split / "a" / "wide.png")
    ds = load("imagefolder", tmp_path, image_size=8, in_memory=True)
    img = ds.test.images[0]
    assert tuple(img.shape) == (3, 8, 8)
    assert int(img[1, 4, 4]) == 255 and int(img[0, 4, 4]) == 0


def test_imagefolder_unreadable_skip_and_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_imagefolder(tmp_path)
    bad = tmp_path / "train" / "bee" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with caplog.at_level(logging.WARNING, logger="cilkit"):
        ds = load("imagefolder", tmp_path, image_size=16)
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1
    assert ds.train.class_counts().tolist() == [3, 3, 3]
    with pytest.raises(DatasetError, match=f"unreadable image {bad}"):
        load("imagefolder", tmp_path, image_size=16, on_unreadable="error")


def test_imagefolder_lazy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_imagefolder(tmp_path, size=40)
    (tmp_path / "val" / "cat" / "empty.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="cilkit"):
        ds = load("imagefolder", tmp_path, cache="none")
    assert caplog.messages == [
        f"imagefolder {tmp_path}: skipped 1 unreadable image file: val/cat/empty.jpg (empty file)"
    ]
    assert not ds.train.in_memory and ds.train.paths is not None
    assert ds.train.image_shape == (3, 224, 224)
    assert len(ds.train) == 9 and len(ds.test) == 6
    assert all(Path(p).suffix == ".png" for p in ds.test.paths or ())

    sized = load("imagefolder", tmp_path, image_size=96, in_memory=False)
    assert sized.train.image_shape == (3, 96, 96)
    data = FileImageDataset.from_image_set(sized.train)
    data = pickle.loads(pickle.dumps(data))  # goes to DataLoader workers
    img, index, error = data[4]
    assert index == 4 and img.dtype == torch.uint8 and tuple(img.shape) == (3, 96, 96)
    assert error == ""
    top, bottom = class_colors({"cat": 0, "ant": 1, "bee": 2}[Path(data.paths[4]).parent.name])
    assert img[:, 5, 48].tolist() == list(top) and img[:, 90, 48].tolist() == list(bottom)

    with pytest.raises(DatasetError, match="empty file"):
        load("imagefolder", tmp_path, on_unreadable="error")


def test_file_image_dataset_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=f"cannot decode image {bad}"):
        FileImageDataset([str(bad)], 32)[0]
    img, index, error = FileImageDataset([str(bad)], 32, on_unreadable="skip")[0]
    assert int(img.sum()) == 0 and index == 0
    assert error.startswith("UnidentifiedImageError: cannot identify image file")
    assert str(bad) not in error  # the path is said once, by whoever reports it


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load("imagefolder", tmp_path / "none")
    assert str(tmp_path / "none" / "train") in str(err.value) and "data.root" in str(err.value)

    write_imagefolder(tmp_path / "mismatch")
    (tmp_path / "mismatch" / "val" / "dog").mkdir()
    with pytest.raises(DatasetError, match="same class folders.*only in val: dog"):
        load("imagefolder", tmp_path / "mismatch", image_size=16)

    write_imagefolder(tmp_path / "ok")
    with pytest.raises(ConfigError, match="image_size"):
        load("imagefolder", tmp_path / "ok", in_memory=True)


def test_decode_images_in_worker_processes(tmp_path: Path) -> None:
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        save_image(two_tone(*class_colors(i), 12, 10), path)
        paths.append(str(path))
    (tmp_path / "bad.png").write_bytes(b"nope")
    paths.insert(3, str(tmp_path / "bad.png"))
    serial, ok_s, err_s = decode_images(paths, 8, "crop", workers=1)
    parallel, ok_p, err_p = decode_images(paths, 8, "crop", workers=2, min_parallel=1)
    assert np.array_equal(serial, parallel) and np.array_equal(ok_s, ok_p)
    assert ok_s.tolist() == [True, True, True, False, True, True, True]
    assert set(err_s) == set(err_p) == {3}
    assert np.array_equal(serial[0], decode_image(paths[0], 8, "crop"))


# --------------------------------------------------------------------------------------------
# real data (slow)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not SYSTEM_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path: Path) -> None:
    ds = load("fashion_mnist", tmp_path)  # found at the Debian location
    check_splits(ds, (1, 28, 28), 10)
    assert len(ds.train) == 60000 and len(ds.test) == 10000
    assert ds.train.class_counts().tolist() == [6000] * 10
    assert ds.test.class_counts().tolist() == [1000] * 10
    mean = ds.train.images.double().mean().item() / 255
    assert abs(mean - ds.mean[0]) < 1e-3


@pytest.fixture(scope="module")
def real_tiny_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parts = [SHARED_DATA / f"tiny-imagenet-100a-{p}.tar.gz" for p in ("train-1", "train-2", "val")]
    if not all(p.is_file() for p in parts):
        pytest.skip("Tiny-ImageNet 100a tarballs not in shared/data")
    root = tmp_path_factory.mktemp("tiny")
    for part in parts:
        extract_archive(part, root)
    return root


@pytest.mark.slow
def test_real_tiny_imagenet_100a(real_tiny_imagenet: Path) -> None:
    start = time.perf_counter()
    ds = load("tiny_imagenet", real_tiny_imagenet, image_size=32)
    first = time.perf_counter() - start
    check_splits(ds, (3, 32, 32), 100)
    assert len(ds.train) == 50000 and len(ds.test) == 5000
    assert ds.train.class_counts().tolist() == [500] * 100
    assert ds.test.class_counts().tolist() == [50] * 100
    assert ds.root == real_tiny_imagenet / "tiny-imagenet-100a"
    assert all(name and not name.startswith("n0") for name in ds.train.class_names)
    start = time.perf_counter()
    again = load("tiny_imagenet", real_tiny_imagenet, image_size=32)
    cached = time.perf_counter() - start
    assert torch.equal(again.train.images, ds.train.images)
    assert cached < first / 2, (first, cached)


@pytest.mark.slow
def test_real_cifar10_from_jpeg(tmp_path: Path) -> None:
    script = SHARED_DATA / "cifar10_jpeg_to_batches.py"
    if not script.is_file() or not (SHARED_DATA / "cifar10-jpeg.tar.gz").is_file():
        pytest.skip("cifar10-jpeg not in shared/data")
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, capture_output=True)
    ds = load("cifar10", tmp_path)
    check_splits(ds, (3, 32, 32), 10)
    assert len(ds.train) == 50000 and len(ds.test) == 10000
    assert ds.train.class_counts().tolist() == [5000] * 10
    assert ds.train.class_names == tuple(CIFAR10_NAMES)
    # the published per-channel mean, within the JPEG re-encoding error
    mean = ds.train.images.double().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(cifar.CIFAR10_MEAN, dtype=torch.float64), atol=0.01)

    # the same JPEGs read as an image folder give the same test images, per class
    with tarfile.open(SHARED_DATA / "cifar10-jpeg.tar.gz") as tf:
        members = [m for m in tf.getmembers() if "/test/" in m.name and m.isfile()]
        tf.extractall(tmp_path / "jpeg", members=members, filter="data")
    folder = tmp_path / "jpeg" / "cifar10-jpeg"
    (folder / "train").symlink_to(folder / "test")
    as_folder = load("imagefolder", folder, image_size=32)
    order = [as_folder.train.class_names.index(c) for c in CIFAR10_NAMES]
    for cls in range(10):
        a = ds.test.images[ds.test.labels == cls].double().mean(dim=0)
        b = as_folder.test.images[as_folder.test.labels == order[cls]].double().mean(dim=0)
        assert torch.allclose(a, b)

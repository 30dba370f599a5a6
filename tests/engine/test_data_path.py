"""The on-device data path: in-memory and file-backed splits, sharding, evaluation order."""

from __future__ import annotations

import torch
from fixtures import write_imagefolder

from cilkit.config.schema import DataConfig
from cilkit.data.base import ImageSet, create_dataset
from cilkit.data.datasets import imagefolder  # noqa: F401  (registration)
from cilkit.data.transforms import PRESETS, BatchTransform
from cilkit.engine.data import DeviceSplit


def _memory_split(n: int = 10) -> DeviceSplit:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    split = ImageSet(torch.arange(n) % 3, ("a", "b", "c"), images=images)
    transform = BatchTransform((0.0,), (1 / 255,), PRESETS["none"], channels_last=False)
    return DeviceSplit(split, split.labels, transform, torch.device("cpu"))


def test_eval_batches_keep_order_and_values():
    ds = _memory_split()
    idx = torch.tensor([7, 2, 5])
    batches = list(ds.eval_batches(idx, 2))
    assert [b.index.tolist() for b in batches] == [[7, 2], [5]]
    assert batches[0].x[:, 0, 0, 0].tolist() == [7.0, 2.0]  # std 1/255: x_norm == pixel value
    assert batches[0].y.tolist() == [1, 2]


def test_train_batches_cover_each_index_once_per_epoch():
    ds = _memory_split(11)
    idx = torch.arange(11)
    seen = torch.cat([b.index for b in ds.train_batches(idx, 3, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(11))


def test_unaugmented_train_batches_are_the_evaluation_images_shuffled():
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    split = ImageSet(torch.arange(12) % 3, ("a", "b", "c"), images=images)
    transform = BatchTransform((0.5,) * 3, (0.25,) * 3, PRESETS["cifar"], channels_last=False)
    ds = DeviceSplit(split, split.labels, transform, torch.device("cpu"))
    idx = torch.arange(12)
    evaluated = torch.cat([b.x for b in ds.eval_batches(idx, 12)])
    plain = list(ds.train_batches(idx, 4, torch.Generator().manual_seed(0), augment=False))
    for b in plain:
        torch.testing.assert_close(b.x, evaluated[b.index])
    assert [b.index.tolist() for b in plain] != [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    gen = torch.Generator().manual_seed(1)
    augmented = next(ds.train_batches(idx, 12, torch.Generator().manual_seed(0), gen))
    assert not torch.allclose(augmented.x, evaluated[augmented.index])  # crops and flips


def test_ranks_take_disjoint_shards_of_every_global_batch():
    shards = []
    for rank in range(2):
        ds = _memory_split(10)
        ds.rank, ds.world_size = rank, 2
        gen = torch.Generator().manual_seed(3)
        shards.append([b.index.tolist() for b in ds.train_batches(torch.arange(10), 4, gen)])
    full = _memory_split(10)
    whole = [
        b.index.tolist()
        for b in full.train_batches(torch.arange(10), 4, torch.Generator().manual_seed(3))
    ]
    assert len(whole) == 3 and len(shards[0]) == len(shards[1]) == 2  # last 2 = 1 per rank: dropped
    for a, b, w in zip(*shards, whole[:2], strict=True):
        assert sorted(a + b) == sorted(w) and not set(a) & set(b)


def test_no_training_batch_gives_a_process_fewer_than_two_samples():
    """BatchNorm cannot train on one sample: such a last batch is dropped (as a DataLoader's
    drop_last would), on one process and on several."""
    for world, n, expected in ((1, 7, [3, 3]), (1, 8, [3, 3, 2]), (2, 9, [3]), (2, 10, [3, 2])):
        ds = _memory_split(n)
        ds.rank, ds.world_size = 0, world
        batches = ds.train_batches(torch.arange(n), 3 * world, torch.Generator().manual_seed(0))
        sizes = [len(b.y) for b in batches]
        assert sizes == expected, (world, n, sizes)


def test_file_backed_split_decodes_in_workers(tmp_path):
    root = write_imagefolder(tmp_path / "imgs", per_class=4, size=16)
    data = create_dataset(
        DataConfig(name="imagefolder", root=str(root), image_size=16, in_memory=False)
    )
    assert not data.train.in_memory
    transform = BatchTransform(data.mean, data.std, PRESETS["imagenet"], channels_last=True)
    ds = DeviceSplit(data.train, data.train.labels, transform, torch.device("cpu"), num_workers=2)
    batches = list(ds.train_batches(torch.arange(len(ds)), 5, torch.Generator().manual_seed(0)))
    assert sum(len(b.y) for b in batches) == len(ds) == 12
    assert batches[0].x.shape[1:] == (3, 16, 16)
    feats = ds.embed(torch.arange(len(ds)), lambda x: x.mean(dim=(2, 3)), batch_size=4)
    assert feats.shape == (12, 3)

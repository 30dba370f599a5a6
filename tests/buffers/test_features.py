"""The shared feature pass: each training image's features are computed once per flip while the
extractor's weights stay the same, and never served after they changed."""

from __future__ import annotations

import torch
from torch import nn

from cilkit.buffers.features import FeatureCache
from cilkit.data.base import ImageSet
from cilkit.data.transforms import PRESETS, BatchTransform
from cilkit.engine.data import DeviceSplit


def _split(n: int = 40) -> DeviceSplit:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=g)
    split = ImageSet(torch.arange(n) % 4, ("a", "b", "c", "d"), images=images)
    transform = BatchTransform((0.5,) * 3, (0.25,) * 3, PRESETS["cifar"], channels_last=False)
    return DeviceSplit(split, split.labels, transform, torch.device("cpu"))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        self.calls = 0  # images seen by forward_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += len(x)
        return self.bn(self.conv(x)).mean(dim=(2, 3))


def test_each_image_is_computed_once_and_served_in_the_order_asked():
    split, net, cache = _split(), Net().eval(), FeatureCache()
    first = torch.tensor([3, 1, 4, 15, 9, 2, 6])
    again = torch.tensor([9, 1, 30, 30, 3, 20])  # some cached, one repeated, some new
    direct = split.embed(again, net.forward_features, 4)
    net.calls = 0
    cache.get(split, net, net.forward_features, first, 4)
    got = cache.get(split, net, net.forward_features, again, 4)
    assert net.calls == len(first) + 2  # 30 and 20 only
    assert cache.computed == net.calls
    torch.testing.assert_close(got, direct)
    flipped = cache.get(split, net, net.forward_features, again, 4, flip=True)  # its own pass
    assert net.calls == len(first) + 2 + 5
    torch.testing.assert_close(flipped, split.embed(again, net.forward_features, 4, flip=True))
    assert not torch.allclose(flipped, got)


def test_any_change_of_the_extractor_starts_over_and_the_head_does_not():
    split, net, cache = _split(), Net().eval(), FeatureCache()
    idx = torch.arange(10)
    before = cache.get(split, net, net.forward_features, idx, 8)
    with torch.no_grad():
        net.head.weight.add_(1.0)  # the head does not change features
    cache.get(split, net, net.forward_features, idx, 8)
    assert cache.computed == 10
    changes = [
        lambda: net.conv.weight.data.mul_(1.5),  # .data bypasses autograd's version counter
        lambda: net.bn.running_mean.add_(0.1),  # a buffer
        lambda: net.conv.bias.data.copy_(net.conv.bias.data.flip(0)),  # same sum, new order
        lambda: net.bn.train().eval(),  # a mode switch changes no value: still cached
    ]
    expected_computed = 10
    for i, change in enumerate(changes):
        change()
        got = cache.get(split, net, net.forward_features, idx, 8)
        changed = i < 3
        expected_computed += 10 if changed else 0
        assert cache.computed == expected_computed, i
        torch.testing.assert_close(got, split.embed(idx, net.forward_features, 8))
    assert not torch.allclose(before, got)
    other = _split()  # another split: its own positions
    cache.get(split=other, network=net, fn=net.forward_features, indices=idx, batch_size=8)
    assert cache.computed == expected_computed + 10
    cache.get(other, net, net.forward_features, idx, 8)  # a new bound method, the same function
    assert cache.computed == expected_computed + 10
    doubled = cache.get(other, net, lambda x: 2 * net.forward_features(x), idx, 8)  # another one
    assert cache.computed == expected_computed + 20
    torch.testing.assert_close(doubled, 2 * split.embed(idx, net.forward_features, 8))


def test_features_under_the_runs_autocast_are_fp32_and_cached_apart():
    split, net, cache = _split(), Net().eval(), FeatureCache()
    idx = torch.arange(12)
    full = cache.get(split, net, net.forward_features, idx, 8)
    seen = []
    net.conv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    half = cache.get(split, net, net.forward_features, idx, 8, amp=torch.bfloat16)
    assert cache.computed == 24  # another precision: computed again, not served from fp32
    assert set(seen) == {torch.bfloat16} and half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.05, rtol=0.05)  # bf16 rounding only
    assert not torch.equal(half, full)
    cache.get(split, net, net.forward_features, idx, 8, amp=torch.bfloat16)
    assert cache.computed == 24  # and cached under it

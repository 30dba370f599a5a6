"""The ImageNet-style training crop: a random-resized crop (torchvision's RandomResizedCrop)."""

from __future__ import annotations

import math

import pytest
import torch

from cilkit.config.schema import AugmentConfig
from cilkit.data.transforms import (
    PRESETS,
    AugmentPreset,
    BatchTransform,
    random_resized_boxes,
    random_resized_crop,
    resolve_preset,
)


def test_the_imagenet_preset_is_a_random_resized_crop_with_the_standard_ranges():
    p = PRESETS["imagenet"]
    assert p.resized_crop and p.flip and p.crop_padding == 0
    assert p.crop_scale == (0.08, 1.0) and p.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    explicit = resolve_preset("imagenet", AugmentConfig(crop_padding=8))
    assert not explicit.resized_crop and explicit.crop_padding == 8
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentPreset(resized_crop=True, crop_scale=(0.5, 1.5))


def test_boxes_vary_in_scale_and_aspect_within_the_ranges_and_fit_the_image():
    g = torch.Generator().manual_seed(0)
    top, left, h, w = random_resized_boxes(2000, 224, 224, (0.08, 1.0), (3 / 4, 4 / 3), g).T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 224).all() and (left + w <= 224).all() and (h >= 1).all()
    share, aspect = h * w / 224**2, w / h
    assert share.min() < 0.12 and share.max() > 0.9 and share.std() > 0.2  # the scale varies
    assert aspect.min() < 0.8 and aspect.max() > 1.25  # and the aspect, log-uniformly
    assert (aspect >= 3 / 4 - 0.02).all() and (aspect <= 4 / 3 + 0.02).all()  # up to rounding
    assert abs(aspect.log().mean().item()) < 0.02  # symmetric in log ratio
    assert len({(a, b) for a, b in zip(top.tolist(), left.tolist(), strict=True)}) > 1000
    again = random_resized_boxes(2000, 224, 224, (0.08, 1.0), (3 / 4, 4 / 3), g)
    assert not torch.equal(again, torch.stack([top, left, h, w], 1))
    same = random_resized_boxes(
        2000, 224, 224, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0)
    )
    assert torch.equal(same, torch.stack([top, left, h, w], 1))  # seeded: reproducible


def test_the_crop_is_resampled_to_the_input_size_and_is_the_identity_for_the_whole_image():
    x = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    g = torch.Generator().manual_seed(1)
    out = random_resized_crop(x, (0.08, 1.0), (3 / 4, 4 / 3), g)
    assert out.shape == (6, 3, 40, 40) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    whole = random_resized_crop(x, (1.0, 1.0), (1.0, 1.0), g)
    torch.testing.assert_close(whole, x.float(), atol=1e-3, rtol=0)


def test_the_crop_shows_the_box_it_drew():
    """On a horizontal ramp (pixel value = column), the output spans the box's columns."""
    cols = torch.arange(64, dtype=torch.float32).expand(1, 1, 64, 64).repeat(4, 3, 1, 1)
    box = random_resized_boxes(
        4, 64, 64, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(2)
    )
    out = random_resized_crop(cols, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(2))
    for i, (_, left, _, w) in enumerate(box.tolist()):
        centre = left + (torch.arange(64) + 0.5) * w / 64 - 0.5  # sampled column per output column
        expected = centre.clamp(0, 63)
        torch.testing.assert_close(out[i, 0, 0], expected, atol=1e-3, rtol=0)


def test_batch_transform_trains_with_the_resized_crop_at_the_configured_size():
    t = BatchTransform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), PRESETS["imagenet"], False)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a = t.train(x, torch.Generator().manual_seed(3))
    b = t.train(x, torch.Generator().manual_seed(3))
    assert a.shape == (8, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, t.train(x, torch.Generator().manual_seed(4)))
    assert not math.isclose(float((a - t.eval(x)).abs().mean()), 0.0)

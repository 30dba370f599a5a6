"""Batched on-device augmentation agrees with a per-image reference."""

from __future__ import annotations

import torch

from cilkit.config.schema import AugmentConfig
from cilkit.data.transforms import PRESETS, BatchTransform, random_crop, random_flip, resolve_preset


def test_random_crop_matches_per_image_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    off_y = torch.randint(0, 5, (16, 1), generator=g)
    off_x = torch.randint(0, 5, (16, 1), generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        oy, ox = int(off_y[i]), int(off_x[i])
        assert torch.equal(out[i], padded[i, :, oy : oy + 8, ox : ox + 8])


def test_flip_flips_about_half():
    x = torch.arange(1000 * 4, dtype=torch.float32).view(1000, 1, 1, 4)
    out = random_flip(x, torch.Generator().manual_seed(1))
    flipped = (out[:, 0, 0, 0] == x[:, 0, 0, 3]).float().mean()
    assert 0.4 < flipped < 0.6
    kept = out[:, 0, 0, 0] == x[:, 0, 0, 0]
    assert torch.all(kept ^ (out[:, 0, 0, 0] == x[:, 0, 0, 3]))


def test_normalise_and_channels_last():
    t = BatchTransform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), PRESETS["none"], channels_last=True)
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = t.eval(x)
    assert torch.allclose(out, torch.full_like(out, 2.0))
    assert out.is_contiguous(memory_format=torch.channels_last)
    aug = BatchTransform((0.5,) * 3, (0.25,) * 3, PRESETS["cifar"]).train(
        x, torch.Generator().manual_seed(0)
    )
    assert aug.shape == x.shape and aug.dtype == torch.float32


def test_config_overrides_preset():
    p = resolve_preset("cifar", AugmentConfig(crop_padding=0, flip=False))
    assert p.crop_padding == 0 and not p.flip and p.brightness > 0

"""Batched tensor augmentation that runs on the training device.

A batch arrives as uint8 ``(B, C, H, W)``; random crop with zero padding, horizontal flip and
brightness jitter are drawn per image with one generator and applied as whole-batch tensor ops,
then the batch is normalised to float (``channels_last`` when asked). Presets hold per-dataset
defaults; ``register_preset`` adds a new one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from cilkit.config.schema import AugmentConfig
from cilkit.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class AugmentPreset:
    """Training augmentation of one family of datasets.

    Attributes:
        crop_padding: zero padding before a random crop back to the input size (0 = no crop).
        flip: random horizontal flip with probability 0.5.
        brightness: multiply by a factor drawn from ``[1 - b, 1 + b]`` (PyCIL's CIFAR jitter).
    """

    crop_padding: int = 0
    flip: bool = False
    brightness: float = 0.0


PRESETS: dict[str, AugmentPreset] = {
    "none": AugmentPreset(),
    "digits": AugmentPreset(crop_padding=1),
    "mnist": AugmentPreset(crop_padding=2),
    "cifar": AugmentPreset(crop_padding=4, flip=True, brightness=63 / 255),
    "tiny_imagenet": AugmentPreset(crop_padding=4, flip=True),
    "imagenet": AugmentPreset(crop_padding=16, flip=True),
}


def register_preset(name: str, preset: AugmentPreset) -> None:
    """Add an augmentation preset (for a custom dataset adapter)."""
    if name in PRESETS:
        raise ValueError(f"augmentation preset '{name}' exists")
    PRESETS[name] = preset


def resolve_preset(dataset_preset: str, cfg: AugmentConfig) -> AugmentPreset:
    """The dataset's preset (or ``cfg.preset``) with the config's explicit values on top."""
    name = cfg.preset or dataset_preset
    if name not in PRESETS:
        raise ConfigError(
            f"data.augment.preset: unknown preset '{name}'{did_you_mean(name, PRESETS)}; "
            f"known: {', '.join(sorted(PRESETS))}"
        )
    preset = PRESETS[name]
    if cfg.crop_padding is not None:
        preset = replace(preset, crop_padding=cfg.crop_padding)
    if cfg.flip is not None:
        preset = replace(preset, flip=cfg.flip)
    return preset


class BatchTransform:
    """Normalise (and for training, augment) uint8 batches on their device.

    Args:
        mean: per-channel mean in [0, 1].
        std: per-channel standard deviation in [0, 1].
        preset: training augmentation.
        channels_last: return batches in ``channels_last`` memory format.
    """

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        preset: AugmentPreset,
        channels_last: bool = True,
    ) -> None:
        self.preset = preset
        self.channels_last = channels_last
        # Fold /255 into the affine normalisation: x_norm = x * scale + shift.
        std_t = torch.tensor(std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
        self._shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in 0..255) batch -> normalised float batch."""
        scale = self._scale.to(x.device)
        shift = self._shift.to(x.device)
        out = torch.addcmul(shift, x.float(), scale)
        if self.channels_last and out.ndim == 4:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def train(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Augment and normalise a uint8 training batch."""
        p = self.preset
        if p.crop_padding > 0:
            x = random_crop(x, p.crop_padding, generator)
        if p.flip:
            x = random_flip(x, generator)
        if p.brightness > 0:
            b = len(x)
            factor = torch.empty(b, 1, 1, 1, device=x.device).uniform_(
                1 - p.brightness, 1 + p.brightness, generator=generator
            )
            x = (x.float() * factor).clamp_(0, 255)
        return self.normalize(x)

    def eval(self, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """Normalise an evaluation batch (optionally horizontally flipped)."""
        return self.normalize(x.flip(3) if flip else x)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """Zero-pad each image by ``padding`` and crop a random window of the original size."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    off_y = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device, generator=generator)
    off_x = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device, generator=generator)
    rows = off_y + torch.arange(h, device=x.device)  # (b, h)
    cols = off_x + torch.arange(w, device=x.device)  # (b, w)
    row_idx = rows[:, None, :, None].expand(b, c, h, w + 2 * padding)
    out = padded.gather(2, row_idx)
    col_idx = cols[:, None, None, :].expand(b, c, h, w)
    return out.gather(3, col_idx)


def random_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Flip each image horizontally with probability 0.5."""
    mask = torch.rand(len(x), device=x.device, generator=generator) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)

"""Batched tensor augmentation that runs on the training device.

A batch arrives as uint8 ``(B, C, H, W)``; random crop with zero padding (or a random-resized
crop, the ImageNet one), horizontal flip and brightness jitter are drawn per image with one
generator and applied as whole-batch tensor ops,
then the batch is normalised to float (``channels_last`` when asked). Presets hold per-dataset
defaults; ``register_preset`` adds a new one.
"""

from __future__ import annotations

import math
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
        resized_crop: a random-resized crop (torchvision's ``RandomResizedCrop``, the standard
            ImageNet training crop) resampled bilinearly to the input size; replaces the padded
            crop.
        crop_scale: range of the crop's area as a share of the image's.
        crop_ratio: range of the crop's aspect ratio (width / height), drawn log-uniformly.
    """

    crop_padding: int = 0
    flip: bool = False
    brightness: float = 0.0
    resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")


PRESETS: dict[str, AugmentPreset] = {
    "none": AugmentPreset(),
    "digits": AugmentPreset(crop_padding=1),
    "mnist": AugmentPreset(crop_padding=2),
    "cifar": AugmentPreset(crop_padding=4, flip=True, brightness=63 / 255),
    "tiny_imagenet": AugmentPreset(crop_padding=4, flip=True),
    # image folders are decoded at S (shorter side S * 256 / 224, centre S x S crop); the
    # random-resized crop is taken within that square (torchvision: within the whole image)
    "imagenet": AugmentPreset(flip=True, resized_crop=True),
    # pre-trained models (the default with a timm backbone): LAMDA-PILOT's training transform,
    # RandomResizedCrop(S, scale=(0.05, 1)) and a flip, straight to the model's input size
    "ptm": AugmentPreset(flip=True, resized_crop=True, crop_scale=(0.05, 1.0)),
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
    if cfg.crop_padding is not None:  # an explicit padded crop replaces a resized one
        preset = replace(preset, crop_padding=cfg.crop_padding, resized_crop=False)
    if cfg.flip is not None:
        preset = replace(preset, flip=cfg.flip)
    return preset


class BatchTransform:
    """Normalise (and for training, augment) uint8 batches on their device.

    Images are stored at their own size (a 32 px CIFAR image stays 32 px on the device) and
    resized per batch to ``input_size`` when the network wants another one (a ViT's 224 px):
    a random-resized crop samples straight to ``input_size``; other augmentations run at the
    stored size and the batch is then resized. Evaluation takes the centre ``crop_pct`` of the
    image and resizes it to ``input_size`` (timm's and PILOT's ``Resize(S / crop_pct)`` +
    ``CenterCrop(S)`` on a square image); at the stored size it leaves the pixels as they are.

    Args:
        mean: per-channel mean in [0, 1].
        std: per-channel standard deviation in [0, 1].
        preset: training augmentation.
        channels_last: return batches in ``channels_last`` memory format.
        input_size: the square size the network takes; None = the stored size.
        interpolation: ``bilinear`` or ``bicubic`` resampling for every resize.
        crop_pct: the centre share of the image evaluation keeps when it resizes.
    """

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        preset: AugmentPreset,
        channels_last: bool = True,
        input_size: int | None = None,
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
    ) -> None:
        if interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(f"interpolation must be bilinear or bicubic, got '{interpolation}'")
        if not 0 < crop_pct <= 1:
            raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.preset = preset
        self.channels_last = channels_last
        self.input_size = input_size
        self.interpolation = interpolation
        self.crop_pct = crop_pct
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
        if p.resized_crop:
            x = random_resized_crop(
                x, p.crop_scale, p.crop_ratio, generator, self.input_size, self.interpolation
            )
        elif p.crop_padding > 0:
            x = random_crop(x, p.crop_padding, generator)
        if p.flip:
            x = random_flip(x, generator)
        if p.brightness > 0:
            b = len(x)
            factor = torch.empty(b, 1, 1, 1, device=x.device).uniform_(
                1 - p.brightness, 1 + p.brightness, generator=generator
            )
            x = (x.float() * factor).clamp_(0, 255)
        if not p.resized_crop:
            x = self._resize(x)
        return self.normalize(x)

    def eval(self, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """Normalise an evaluation batch (optionally horizontally flipped), centre-cropped and
        resized to ``input_size`` when that is not the stored size."""
        x = x.flip(3) if flip else x
        if self._needs_resize(x):
            h, w = x.shape[-2:]
            ch, cw = max(1, round(h * self.crop_pct)), max(1, round(w * self.crop_pct))
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top : top + ch, left : left + cw]
        return self.normalize(self._resize(x))

    def _needs_resize(self, x: torch.Tensor) -> bool:
        return self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size,) * 2

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` resampled to ``input_size`` (floats in 0..255), or unchanged at that size."""
        if not self._needs_resize(x):
            return x
        return resize(x, self.input_size, self.interpolation)


def resize(x: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """A batch resampled to ``size x size`` (antialiased when it shrinks, as PIL does), as
    floats clamped to ``0..255``."""
    shrinks = size < max(x.shape[-2:])
    out = torch.nn.functional.interpolate(
        x.float(), size=(size, size), mode=interpolation, align_corners=False, antialias=shrinks
    )
    return out.clamp_(0, 255)


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


def random_resized_boxes(
    b: int,
    h: int,
    w: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
    device: torch.device | str = "cpu",
    attempts: int = 10,
) -> torch.Tensor:
    """``(b, 4)`` float boxes ``(top, left, height, width)`` of torchvision's ``RandomResizedCrop``.

    Per image, up to ``attempts`` (area share, log aspect ratio) pairs are drawn uniformly from
    ``scale`` and ``log(ratio)``; the first whose rounded box fits the image is kept and placed
    uniformly at random; an image with none gets the centre crop of the largest box whose aspect
    ratio is clamped into ``ratio`` (torchvision's fallback). All draws are made for the whole
    batch at once (a fixed number per image), so nothing is read back from the device.
    """
    area = torch.empty(b, attempts, device=device).uniform_(*scale, generator=generator) * (h * w)
    log_r = torch.empty(b, attempts, device=device).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    r = torch.exp(log_r)
    cw, ch = torch.sqrt(area * r).round(), torch.sqrt(area / r).round()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(fits.any(1), fits.int().argmax(1), 0)[:, None]
    cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
    u = torch.rand(b, 2, device=device, generator=generator)  # uniform integer offsets
    top = torch.floor(u[:, 0] * (h - ch + 1)).clamp(max=h - ch)
    left = torch.floor(u[:, 1] * (w - cw + 1)).clamp(max=w - cw)
    if w / h < ratio[0]:  # the fallback: the centre crop at the clamped aspect ratio
        fw, fh = w, round(w / ratio[0])
    elif w / h > ratio[1]:
        fw, fh = round(h * ratio[1]), h
    else:
        fw, fh = w, h
    ok = fits.any(1)
    box = torch.stack([top, left, ch, cw], 1)
    fallback = torch.tensor([(h - fh) // 2, (w - fw) // 2, fh, fw], dtype=box.dtype, device=device)
    return torch.where(ok[:, None], box, fallback)


def random_resized_crop(
    x: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
    size: int | None = None,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """A random-resized crop of each image (:func:`random_resized_boxes`), resampled to
    ``size x size`` (default: the input size) with one batched ``grid_sample``, bilinear or
    bicubic; returns floats in ``0..255``."""
    b, _, h, w = x.shape
    oh, ow = (size, size) if size is not None else (h, w)
    top, left, ch, cw = random_resized_boxes(b, h, w, scale, ratio, generator, x.device).unbind(1)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = cw / w, (2 * left + cw) / w - 1
    theta[:, 1, 1], theta[:, 1, 2] = ch / h, (2 * top + ch) / h - 1
    grid = torch.nn.functional.affine_grid(theta, [b, 1, oh, ow], align_corners=False)
    out = torch.nn.functional.grid_sample(
        x.float(), grid, mode=interpolation, padding_mode="border", align_corners=False
    )
    return out.clamp_(0, 255) if interpolation == "bicubic" else out

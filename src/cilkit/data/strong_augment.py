"""Strong batched augmentation on the device: AutoAugment's CIFAR policy, Cutout, and the
SimCLR / MoCo v2 view, as PaCo's CIFAR recipe uses them.

Every function takes a ``uint8`` batch ``(B, C, H, W)`` and one ``torch.Generator`` on the
batch's device, draws every random choice of the whole batch up front (the same draws whatever
the images hold), applies each operation to the whole batch at once and keeps its result where
a sample drew it (``torch.where`` on a per-sample mask: no per-image Python loop, no host
synchronisation), and returns a ``uint8`` batch of the same shape. As on PIL's ``uint8``
images, each operation's result is quantised (rounded or truncated as PIL does) and clipped to
0..255. Colour operations on one-channel images treat the channel as the grey level.

Differences from the PIL / torchvision originals (the AutoAugment port the PaCo authors ship
as ``PaCo/LT/autoaug.py``; torchvision's ``ColorJitter``, ``RandomResizedCrop`` and
``RandomGrayscale``; PIL's ``GaussianBlur``): the colour, contrast, brightness, sharpness,
posterize, solarize, invert, autocontrast, equalize, rotate and translate operations equal PIL's
on ``uint8`` images; shears resample bicubically with PyTorch's kernel (a = -0.75; PIL uses
-0.5); nearest-neighbour rounding may differ by one pixel at exact ties; the hue jitter shifts
hue in float HSV (torchvision's tensor path; on PIL images torchvision works in 8-bit HSV); the
blur is a true separable Gaussian (PIL approximates it by three box blurs) with a 13-tap kernel
and replicated edges; the crop padding and Cutout scale with the image on sizes other than 32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cilkit.data.transforms import random_crop, random_flip

OPS = (
    "invert", "contrast", "color", "brightness", "sharpness", "posterize", "solarize",
    "autocontrast", "equalize", "rotate", "shearX", "shearY", "translateX", "translateY",
)  # fmt: skip


def _steps(lo: float, hi: float) -> list[float]:
    return [lo + (hi - lo) * k / 9 for k in range(10)]


_RANGES = {
    "shearX": _steps(0, 0.3),
    "shearY": _steps(0, 0.3),
    "translateX": _steps(0, 150 / 331),
    "translateY": _steps(0, 150 / 331),
    "rotate": _steps(0, 30),
    "color": _steps(0, 0.9),
    "posterize": [float(round(v)) for v in _steps(8, 4)],
    "solarize": _steps(256, 0),
    "contrast": _steps(0, 0.9),
    "sharpness": _steps(0, 0.9),
    "brightness": _steps(0, 0.9),
    "autocontrast": [0.0] * 10,
    "equalize": [0.0] * 10,
    "invert": [0.0] * 10,
}

CIFAR10_POLICY = (
    (0.1, "invert", 7, 0.2, "contrast", 6), (0.7, "rotate", 2, 0.3, "translateX", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3), (0.5, "shearY", 8, 0.7, "translateY", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2), (0.2, "shearY", 7, 0.3, "posterize", 7),
    (0.4, "color", 3, 0.6, "brightness", 7), (0.3, "sharpness", 9, 0.7, "brightness", 9),
    (0.6, "equalize", 5, 0.5, "equalize", 1), (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translateX", 8), (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translateY", 3, 0.2, "sharpness", 6), (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3), (0.2, "equalize", 0, 0.6, "autocontrast", 0),
    (0.2, "equalize", 8, 0.6, "equalize", 4), (0.9, "color", 9, 0.6, "equalize", 6),
    (0.8, "autocontrast", 4, 0.2, "solarize", 8), (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3), (0.9, "translateY", 9, 0.7, "translateY", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3), (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translateY", 9, 0.9, "autocontrast", 1),
)  # fmt: skip
"""AutoAugment's 25 CIFAR-10 sub-policies (Cubuk et al., 2019): (p1, op1, magnitude index 1,
p2, op2, magnitude index 2)."""

_FILL = 128.0


def _q(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp_(0, 255)


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (PIL's ``L``) of float images, ``(B, 1, H, W)``."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).round()


def blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageEnhance``: ``degenerate + factor * (x - degenerate)``, truncated."""
    return (degenerate + _col(factor) * (x - degenerate)).floor().clamp_(0, 255)


def _contrast(x, f):
    return blend(x, _col((grey(x).mean((1, 2, 3)) + 0.5).floor()), f)


def _color(x, f):
    return blend(x, grey(x).expand_as(x), f)


def _sharpness(x, f):
    c = x.shape[1]
    k = torch.ones(3, 3, device=x.device)
    k[1, 1] = 5
    smooth = F.conv2d(x, (k / 13).expand(c, 1, 3, 3), groups=c).round()
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth  # PIL keeps the border pixels
    return blend(x, degenerate, f)


def _autocontrast(x):
    x64 = x.double()  # PIL's lookup table is computed in Python floats
    lo, hi = x64.amin((2, 3), keepdim=True), x64.amax((2, 3), keepdim=True)
    scale = 255 / (hi - lo).clamp(min=1)
    out = (x64 * scale - lo * scale).floor().clamp(0, 255).to(x.dtype)
    return torch.where(hi > lo, out, x)


def _equalize(x):
    b, c, h, w = x.shape
    flat = x.long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(
        1, flat, torch.ones_like(x).view(b * c, -1)
    )
    last = hist.gather(1, flat.amax(1, keepdim=True))  # count of the highest level present
    step = ((h * w - last) / 255).floor()
    before = hist.cumsum(1) - hist
    lut = ((step / 2).floor() + before).div(step.clamp(min=1)).floor().clamp(max=255)
    out = lut.gather(1, flat).view(b, c, h, w)
    return torch.where((step > 0).view(b, c, 1, 1), out, x)


def affine(
    x: torch.Tensor, matrix: torch.Tensor, mode: str, fill: float | None = _FILL
) -> torch.Tensor:
    """PIL's ``Image.transform(AFFINE)``: output pixel centre ``p`` takes input ``matrix @ (p, 1)``
    (pixel coordinates, ``matrix`` ``(B, 2, 3)``); outside points get ``fill`` (None: the
    nearest border pixel)."""
    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=x.device) + 0.5,
        torch.arange(w, device=x.device) + 0.5,
        indexing="ij",
    )
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3)
    uv = pts @ matrix.transpose(1, 2)  # (B, HW, 2)
    grid = torch.stack([2 * uv[..., 0] / w - 1, 2 * uv[..., 1] / h - 1], -1).view(b, h, w, 2)
    pad, shift = ("border", 0.0) if fill is None else ("zeros", fill)
    out = F.grid_sample(x - shift, grid, mode=mode, padding_mode=pad, align_corners=False)
    return _q(out + shift)


def _matrix(a, b_, c, d, e, f):
    return torch.stack([torch.stack([a, b_, c], -1), torch.stack([d, e, f], -1)], 1)


def _geometric(x, op, mag):
    b, _, h, w = x.shape
    one, zero = torch.ones_like(mag), torch.zeros_like(mag)
    if op == "rotate":  # counter-clockwise about the centre, as PIL's rotate
        a = -mag * math.pi / 180
        cos, sin, cx, cy = a.cos(), a.sin(), w / 2, h / 2
        m = _matrix(cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
        return affine(x, m, "nearest")
    if op == "shearX":
        return affine(x, _matrix(one, mag, zero, zero, one, zero), "bicubic")
    if op == "shearY":
        return affine(x, _matrix(one, zero, zero, mag, one, zero), "bicubic")
    if op == "translateX":
        return affine(x, _matrix(one, zero, mag * w, zero, one, zero), "nearest")
    return affine(x, _matrix(one, zero, zero, zero, one, mag * h), "nearest")


def _apply(x: torch.Tensor, op: str, mag: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    if op == "invert":
        return 255 - x
    if op in ("contrast", "color", "sharpness", "brightness"):
        f = 1 + mag * sign
        if op == "brightness":
            return blend(x, torch.zeros_like(x), f)
        return {"contrast": _contrast, "color": _color, "sharpness": _sharpness}[op](x, f)
    if op == "posterize":
        q = _col(2 ** (8 - mag))
        return (x / q).floor() * q
    if op == "solarize":
        return torch.where(x < _col(mag), x, 255 - x)
    if op == "autocontrast":
        return _autocontrast(x)
    if op == "equalize":
        return _equalize(x)
    return _geometric(x, op, mag * sign if op != "rotate" else mag)


def cifar_autoaugment(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """AutoAugment's CIFAR-10 policy: each image draws one of the 25 sub-policies and applies
    each of its two operations with the operation's probability (signs drawn at random, fill
    grey 128 for geometric operations)."""
    dev, b = x.device, len(x)
    table = torch.tensor(
        [[p1, OPS.index(o1), _RANGES[o1][m1], p2, OPS.index(o2), _RANGES[o2][m2]]
         for p1, o1, m1, p2, o2, m2 in CIFAR10_POLICY], device=dev
    )  # fmt: skip
    rows = table[torch.randint(len(table), (b,), device=dev, generator=generator)]
    fire = torch.rand(b, 2, device=dev, generator=generator) < rows[:, [0, 3]]
    sign = torch.randint(2, (b, 2), device=dev, generator=generator).float() * 2 - 1
    out = x.float()
    for slot in range(2):
        op_id, mag = rows[:, 1 + 3 * slot].long(), rows[:, 2 + 3 * slot]
        for k, op in enumerate(OPS):
            chosen = _col(fire[:, slot] & (op_id == k))
            out = torch.where(chosen, _apply(out, op, mag, sign[:, slot]), out)
    return out.to(torch.uint8)


def cutout(x: torch.Tensor, length: int, generator: torch.Generator | None) -> torch.Tensor:
    """DeVries and Taylor's Cutout: zero one ``length`` square (clipped at the borders) centred
    on a uniformly drawn pixel of each image."""
    b, _, h, w = x.shape
    cy = torch.randint(h, (b, 1), device=x.device, generator=generator)
    cx = torch.randint(w, (b, 1), device=x.device, generator=generator)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_y = (rows >= cy - length // 2) & (rows < cy + length // 2)
    in_x = (cols >= cx - length // 2) & (cols < cx + length // 2)
    hole = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    return x.masked_fill(hole, 0)


def paco_strong_view(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The PaCo authors' CIFAR query view: random crop (padding 4), flip, AutoAugment's CIFAR
    policy, Cutout of 16 pixels; padding and Cutout scale with the image (an eighth and a half
    of its height) on other sizes than 32."""
    size = x.shape[-2]
    x = random_flip(random_crop(x, round(size / 8), generator), generator)
    return cutout(cifar_autoaugment(x, generator), round(size / 2), generator)


def _resized_crop(x, generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), tries=10):
    """torchvision's ``RandomResizedCrop`` (bilinear) back to the input size."""
    b, _, h, w = x.shape
    dev = x.device
    area = torch.empty(b, tries, device=dev).uniform_(*scale, generator=generator) * h * w
    log_r = torch.empty(b, tries, device=dev).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    cw, ch = (area * log_r.exp()).sqrt().round(), (area / log_r.exp()).sqrt().round()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(ok, torch.arange(tries, device=dev), tries).amin(1, keepdim=True)
    found = first[:, 0] < tries
    first = first.clamp(max=tries - 1)
    cw = torch.where(found, cw.gather(1, first)[:, 0], float(w))
    ch = torch.where(found, ch.gather(1, first)[:, 0], float(h))
    top = (torch.rand(b, device=dev, generator=generator) * (h - ch + 1)).floor()
    left = (torch.rand(b, device=dev, generator=generator) * (w - cw + 1)).floor()
    zero = torch.zeros_like(cw)
    m = _matrix(cw / w, zero, left, zero, ch / h, top)
    return affine(x.float(), m, "bilinear", fill=None)


def _jitter(x, generator, strength=0.4, hue=0.1):
    """torchvision's ``ColorJitter(s, s, s, hue)``: the four adjustments in a random order."""
    b, dev = len(x), x.device
    f = torch.empty(b, 3, device=dev).uniform_(1 - strength, 1 + strength, generator=generator)
    h = torch.empty(b, device=dev).uniform_(-hue, hue, generator=generator)
    order = torch.rand(b, 4, device=dev, generator=generator).argsort(1)
    for pos in range(4):
        step = order[:, pos]
        x = torch.where(_col(step == 0), blend(x, torch.zeros_like(x), f[:, 0]), x)
        x = torch.where(_col(step == 1), _contrast(x, f[:, 1]), x)
        if x.shape[1] == 3:
            x = torch.where(_col(step == 2), _color(x, f[:, 2]), x)
            x = torch.where(_col(step == 3), _hue(x, h), x)
    return x


def _hue(x, shift):
    """Shift the hue by ``shift`` turns in HSV space (torchvision's ``adjust_hue``)."""
    r, g, b = (x / 255).unbind(1)
    maxc, minc = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    cr = maxc - minc
    s = torch.where(maxc > 0, cr / maxc.clamp(min=1e-8), torch.zeros_like(cr))
    crd = cr.clamp(min=1e-8)
    h = torch.where(
        maxc == r, (g - b) / crd, torch.where(maxc == g, 2 + (b - r) / crd, 4 + (r - g) / crd)
    )
    h = torch.where(cr > 0, h / 6, torch.zeros_like(h))
    h = torch.remainder(h + shift.view(-1, 1, 1), 1.0) * 6
    i = h.floor()
    f, i = h - i, i.long() % 6
    p, q, t = maxc * (1 - s), maxc * (1 - s * f), maxc * (1 - s * (1 - f))
    v = maxc
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, rgb in enumerate(table):
        out = torch.where((i == k)[:, None], torch.stack(rgb, 1), out)
    return _q(out * 255)


def _blur(x, sigma, radius=6):
    b, c, h, w = x.shape
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b*c, taps)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return _q(y.view(b, c, h, w))


def simclr_cifar_view(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The PaCo authors' CIFAR key view (MoCo v2's augmentation at 32 pixels): random resized
    crop (scale 0.2-1), flip, colour jitter (0.4, 0.4, 0.4, 0.1) with probability 0.8, greyscale
    with probability 0.2, Gaussian blur (sigma 0.1-2) with probability 0.5."""
    b, dev = len(x), x.device
    x = random_flip(_resized_crop(x, generator), generator)
    u = torch.rand(b, 3, device=dev, generator=generator)
    sigma = torch.empty(b, device=dev).uniform_(0.1, 2.0, generator=generator)
    x = torch.where(_col(u[:, 0] < 0.8), _jitter(x, generator), x)
    x = torch.where(_col(u[:, 1] < 0.2), grey(x).expand_as(x), x)
    x = torch.where(_col(u[:, 2] < 0.5), _blur(x, sigma), x)
    return x.to(torch.uint8)

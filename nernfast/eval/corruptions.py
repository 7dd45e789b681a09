"""nernfast's built-in corruption suite, used for OOD accuracy when no standard OOD set
(CIFAR-10-C, CIFAR-100-C, ImageNet-R) is on disk. It is *not* CIFAR-C and is never labelled so.

Every corruption maps a pixel batch (B, C, H, W) in [0, 1] to a corrupted batch in [0, 1], at
severity 1..5, drawing any randomness from the given ``torch.Generator`` (seeded per corruption
and severity by the caller). Parameters follow Hendrycks & Dietterich's ImageNet-C where it has
the corruption, sized to the image where it depends on pixels:

=================  ===================================================  ==========================
name               operation                                            severity 1..5
=================  ===================================================  ==========================
gaussian_noise     x + N(0, c^2)                                        c = .08 .12 .18 .26 .38
shot_noise         Poisson(x * c) / c                                   c = 60 25 12 5 3
impulse_noise      fraction c of values set to 0 or 1 (salt & pepper)   c = .03 .06 .09 .17 .27
gaussian_blur      Gaussian filter, sigma = c * max(1, side / 32) px    c = .5 .75 1 1.25 1.5
contrast           (x - m) * c + m, m = the image's mean                c = .4 .3 .2 .1 .05
brightness         HSV value + c (grey: x + c)                          c = .1 .2 .3 .4 .5
jpeg               8x8 block DCT quantised with the JPEG luminance      quality = 25 18 15 10 7
                   table at that quality (each channel, no chroma
                   subsampling)
pixelate           area-downscale to c * side, nearest upscale          c = .6 .5 .4 .3 .25
=================  ===================================================  ==========================
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

SEVERITIES = (1, 2, 3, 4, 5)


def _c(table, severity: int):
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1..5, got {severity}")
    return table[severity - 1]


def _randn(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x.device, x.dtype)


def _rand(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape, generator=gen, dtype=torch.float32).to(x.device, x.dtype)


def gaussian_noise(x, severity, gen):
    c = _c((0.08, 0.12, 0.18, 0.26, 0.38), severity)
    return (x + c * _randn(x, gen)).clamp(0, 1)


def shot_noise(x, severity, gen):
    c = _c((60, 25, 12, 5, 3), severity)
    return (torch.poisson((x * c).float().cpu(), generator=gen).to(x.device, x.dtype) / c).clamp(0, 1)


def impulse_noise(x, severity, gen):
    c = _c((0.03, 0.06, 0.09, 0.17, 0.27), severity)
    r = _rand(x, gen)
    salt = _rand(x, gen) < 0.5
    return torch.where(r < c, salt.to(x.dtype), x)


def gaussian_blur(x, severity, gen):
    side = max(x.shape[-2:])
    sigma = _c((0.5, 0.75, 1.0, 1.25, 1.5), severity) * max(1.0, side / 32)
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (r, r, r, r), mode="replicate" if r < min(x.shape[-2:]) else "constant")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y.clamp(0, 1)


def contrast(x, severity, gen):
    c = _c((0.4, 0.3, 0.2, 0.1, 0.05), severity)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - m) * c + m).clamp(0, 1)


def brightness(x, severity, gen):
    c = _c((0.1, 0.2, 0.3, 0.4, 0.5), severity)
    if x.shape[1] == 1:
        return (x + c).clamp(0, 1)
    v = x.max(1, keepdim=True).values   # HSV value; hue and saturation kept => rgb scales with v
    v_new = (v + c).clamp(max=1.0)
    return torch.where(v > 0, x * v_new / v.clamp(min=1e-12), v_new.expand_as(x)).clamp(0, 1)


JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.float()


def jpeg(x, severity, gen):
    q = _c((25, 18, 15, 10, 7), severity)
    scale = 5000 / q if q < 50 else 200 - 2 * q          # the IJG quality scaling
    table = ((JPEG_LUMA * scale + 50) // 100).clamp(min=1).to(x.device, x.dtype)
    b, c, h, w = x.shape
    ph, pw = (-h) % 8, (-w) % 8
    y = F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
    H, W = y.shape[-2:]
    blocks = (y * 255 - 128).reshape(b, c, H // 8, 8, W // 8, 8).transpose(3, 4)   # (..., 8, 8) blocks
    d = _dct_matrix().to(x.device, x.dtype)
    coef = d @ blocks @ d.T
    coef = torch.round(coef / table) * table
    blocks = d.T @ coef @ d
    y = ((blocks.transpose(3, 4).reshape(b, c, H, W) + 128) / 255)[..., :h, :w]
    return torch.round(y.clamp(0, 1) * 255) / 255


def pixelate(x, severity, gen):
    c = _c((0.6, 0.5, 0.4, 0.3, 0.25), severity)
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h * c)), max(1, round(w * c))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


CORRUPTIONS: dict[str, Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "gaussian_blur": gaussian_blur, "contrast": contrast, "brightness": brightness, "jpeg": jpeg,
    "pixelate": pixelate,
}


def corrupt(x: torch.Tensor, name: str, severity: int, gen: torch.Generator) -> torch.Tensor:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name](x, severity, gen)

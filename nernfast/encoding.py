"""Positional encodings of kernel coordinates.

basic (NeRN): for each coordinate p in (layer, filter, channel) and level j = 0..L-1,
    x = p * base**j * pi,  features sin(x), cos(x).
Layout: coordinate-major, then level, sin/cos interleaved: feature index c*2L + 2j + {0: sin, 1: cos}.
Width 6L (L=40, base=0.76 -> 240). The first predictor layer is therefore linear in three
per-coordinate blocks, which the fast paths exploit (see nernfast.ops.tables).

ffn (Gaussian Fourier features): x = 2*pi * p @ B.T with B ~ N(0, sigma^2) of shape (F, 3), fixed by
a seed; features [sin(x), cos(x)], width 2F. It mixes coordinates, so no table shortcut applies.

What the fast paths (nernfast.ops.predict, nernfast.ops.tables) need from an encoding is the
``PositionalEncoding`` interface; they use nothing else. A new encoding subclasses it: the PyTorch
paths then work at once, the table shortcut when it has ``coordinate_blocks``, and the Triton
kernels once ``kernel_encoding`` names a form that kernels/encoding.py computes.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn

ENCODINGS = ("basic", "ffn")


class KernelEncoding(NamedTuple):
    """The Triton kernels' description of an encoding (kernels/encoding.py computes it in registers)."""
    kind: str             # a key of nernfast.kernels.encoding.ENC_MODES ("basic", "ffn")
    size: int             # levels L (basic) or features F (ffn)
    params: torch.Tensor  # fp32: the frequencies (L,) or B (F, 3)


class PositionalEncoding(nn.Module):
    """coords (N, 3) -> features (N, out_features); the interface of the fast paths.

    ``coordinate_blocks``: True when enc(p) = [e(p_0), e(p_1), e(p_2)], each block computed by
    ``encode_coordinate`` from one coordinate, so the first predictor layer is three table look-ups.
    ``kernel_encoding()``: the form the Triton kernels compute, or None (then the PyTorch path runs).
    """
    coordinate_blocks = False

    @property
    def out_features(self) -> int:
        raise NotImplementedError

    def encode_coordinate(self, values: torch.Tensor) -> torch.Tensor:
        """Block of one coordinate, (M,) -> (M, out_features // 3); only with ``coordinate_blocks``."""
        raise NotImplementedError(f"{type(self).__name__} has no per-coordinate blocks")

    def kernel_encoding(self) -> KernelEncoding | None:
        return None


class BasicEncoding(PositionalEncoding):
    coordinate_blocks = True

    def __init__(self, levels: int = 40, base: float = 0.76):
        super().__init__()
        self.levels, self.base = levels, base
        self.register_buffer("freqs", (base ** torch.arange(levels, dtype=torch.float64) * math.pi).float(),
                             persistent=False)

    @property
    def out_features(self) -> int:
        return 6 * self.levels

    def encode_coordinate(self, values: torch.Tensor) -> torch.Tensor:
        """Encoding block of one coordinate: (M,) -> (M, 2L)."""
        x = values.to(self.freqs.dtype)[:, None] * self.freqs
        return torch.stack((torch.sin(x), torch.cos(x)), dim=-1).flatten(1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        x = coords.to(self.freqs.dtype)[:, :, None] * self.freqs  # (N, 3, L)
        return torch.stack((torch.sin(x), torch.cos(x)), dim=-1).flatten(1)

    def kernel_encoding(self) -> KernelEncoding:
        return KernelEncoding("basic", self.levels, self.freqs.float())

    def extra_repr(self) -> str:
        return f"levels={self.levels}, base={self.base}"


class FFNEncoding(PositionalEncoding):
    def __init__(self, num_features: int = 120, sigma: float = 1.0, seed: int = 0):
        super().__init__()
        self.num_features, self.sigma, self.seed = num_features, sigma, seed
        g = torch.Generator().manual_seed(seed)
        # Persistent: B is part of the artefact so a checkpoint never depends on RNG details.
        self.register_buffer("B", torch.randn(num_features, 3, generator=g) * sigma)

    @property
    def out_features(self) -> int:
        return 2 * self.num_features

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        x = 2 * math.pi * coords.to(self.B.dtype) @ self.B.T
        return torch.cat((torch.sin(x), torch.cos(x)), dim=-1)

    def kernel_encoding(self) -> KernelEncoding:
        return KernelEncoding("ffn", self.num_features, self.B.float())

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, sigma={self.sigma}, seed={self.seed}"


def build_encoding(kind: str = "basic", levels: int = 40, base: float = 0.76,
                   ffn_features: int = 120, ffn_sigma: float = 1.0, ffn_seed: int = 0) -> PositionalEncoding:
    if kind == "basic":
        return BasicEncoding(levels, base)
    if kind == "ffn":
        return FFNEncoding(ffn_features, ffn_sigma, ffn_seed)
    raise ValueError(f"unknown encoding {kind!r}; choose one of {ENCODINGS}")

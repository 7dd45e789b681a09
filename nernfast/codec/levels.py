"""Entropy-coded uniform quantisation of the predictor's weights (the compact artefact's ``ans`` scheme).

The int quantisers (nernfast.codec.quant) spend the same bits on every weight; trained predictor
weights are heavy-tailed (max |w| is 5-14x their RMS on Fashion-MNIST), so most int8 levels go
unused and zstd cannot recover the waste (7.1 bits per weight stored). Here one step per weight
matrix, a fraction ``rel`` of its RMS, and the levels are coded with ANS (constriction) under the
matrix's own level histogram:

    step = fp32(rel * sqrt(mean(w**2)))      (1 when the matrix is all zero)
    q    = round_half_even(w / step)          integer levels, |q| <= MAX_LEVEL
    w'   = q * step                           (fp32)

At the squared error of int8 per output channel (rel 0.04) the Fashion-MNIST H140 predictor part
is 78.7 kB against int8's 87.0 kB (docs/compression.md).

Stored per matrix: the step (fp32), the histogram of its levels over [lo, hi] (int32 counts; the
model both sides build from it: probabilities counts / sum, exact in IEEE arithmetic, so decoding
is bit-identical on every machine) and the ANS words. ``FakeQuantUniform`` is the same rule as a
parametrization with a straight-through gradient, for the quantisation-aware fine-tune.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

MAX_LEVEL = 1 << 20  # a coarser bound than any useful step reaches; keeps the histogram small


@dataclass(frozen=True)
class Levels:
    """``q`` (int64, the weight's shape) and ``step`` (fp32 scalar tensor): ``w' = q * step``."""
    q: torch.Tensor
    step: torch.Tensor


def uniform_step(w: torch.Tensor, rel: float) -> torch.Tensor:
    """The quantiser step of ``w`` (fp32 scalar): ``rel`` times its RMS, 1 for an all-zero ``w``."""
    if not rel > 0:
        raise ValueError(f"the relative step must be > 0, got {rel}")
    rms = w.detach().float().pow(2).mean().sqrt()
    return torch.where(rms > 0, rms * rel, torch.ones_like(rms)).float()


def quantize_uniform(w: torch.Tensor, rel: float) -> Levels:
    if not torch.isfinite(w).all():
        raise ValueError("cannot quantise non-finite weights (NaN/Inf): the predictor diverged or is corrupt")
    step = uniform_step(w, rel)
    q = torch.round(w.detach().float() / step)
    if q.numel() and q.abs().max() > MAX_LEVEL:
        raise ValueError(f"step {rel} x RMS gives levels beyond +-{MAX_LEVEL}; choose a larger --step")
    return Levels(q.to(torch.int64), step)


def dequantize_uniform(lv: Levels) -> torch.Tensor:
    return lv.q.float() * lv.step.float()


class FakeQuantUniform(nn.Module):
    """Parametrization: the forward sees ``q * step`` (step from the weight, without gradient), the
    gradient passes straight through to the latent fp32 weight."""

    def __init__(self, rel: float):
        super().__init__()
        if not rel > 0:
            raise ValueError(f"the relative step must be > 0, got {rel}")
        self.rel = rel

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        wq = dequantize_uniform(quantize_uniform(w, self.rel)).to(w.dtype)
        return w + (wq - w).detach()


def _model(counts: np.ndarray):
    import constriction
    return constriction.stream.model.Categorical(counts.astype(np.float64) / counts.sum(), perfect=False)


def encode_levels(q: torch.Tensor) -> tuple[int, np.ndarray, np.ndarray]:
    """(lo, int32 histogram of the levels over [lo, hi], uint32 ANS words) of integer levels ``q``."""
    import constriction
    flat = q.reshape(-1).numpy().astype(np.int64)
    if flat.size == 0:
        return 0, np.zeros(0, np.int32), np.zeros(0, np.uint32)
    lo = int(flat.min())
    counts = np.bincount(flat - lo).astype(np.int32)
    if counts.size == 1:  # one level: nothing to code (and constriction needs two symbols)
        return lo, counts, np.zeros(0, np.uint32)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse((flat - lo).astype(np.int32), _model(counts))
    return lo, counts, coder.get_compressed().astype(np.uint32)


def decode_levels(lo: int, counts: np.ndarray, words: np.ndarray, shape: list[int]) -> torch.Tensor:
    """Inverse of ``encode_levels``: the int64 levels in ``shape``."""
    import constriction
    n = int(np.prod(shape, dtype=np.int64))
    if n == 0:
        return torch.zeros(shape, dtype=torch.int64)
    if counts.size == 0 or counts.min() < 0 or counts.sum() != n:
        raise ValueError(f"level histogram sums to {int(counts.sum())}, the weight has {n} values")
    if counts.size == 1:
        return torch.full(shape, lo, dtype=torch.int64)
    coder = constriction.stream.stack.AnsCoder(np.asarray(words, dtype=np.uint32))
    sym = np.asarray(coder.decode(_model(counts), n), dtype=np.int64)
    return torch.from_numpy(sym + lo).reshape(shape)

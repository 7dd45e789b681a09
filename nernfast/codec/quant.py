"""Weight quantisers of the compact artefact: int8 per output channel, 2-7 bits (int4 the usual)
group-wise.

One rule for all (torchao's ``SYMMETRIC_NO_CLIPPING_ERR``): zero point 0, one scale per block of
input weights of one output channel (the whole row for int8, ``group`` consecutive weights below
8 bits; a row not divisible by ``group`` ends in a shorter group), chosen so neither end clips:

    scale = max(min(w_blk, 0) / qmin, max(w_blk, 0) / qmax), at least 2**-24, rounded to fp16
    q     = clamp(round_half_even(w * (1 / scale)), qmin, qmax)          (qmin, qmax) = (-2**(b-1), 2**(b-1)-1)
    w'    = q * scale                                                    (fp32)

``quantize`` runs the rule on torchao's affine primitives (``choose_qparams_affine``,
``quantize_affine``) when torchao imports, else on ``quantize_reference`` (plain PyTorch, the
ground truth the tests compare torchao against, bit for bit). ``dequantize`` is plain PyTorch:
decoding an artefact never needs torchao. ``FakeQuant`` is the same rule as a parametrization with
a straight-through gradient, for the quantisation-aware fine-tune.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 2.0 ** -24  # the smallest fp16 subnormal: an all-zero block gets a representable scale
BITS = (8, 7, 6, 5, 4, 3, 2)


@dataclass(frozen=True)
class Quantized:
    """``q`` (out, in) int8 holding values in [qmin, qmax]; ``scale`` (out, ceil(in / group)) fp16."""
    q: torch.Tensor
    scale: torch.Tensor
    bits: int
    group: int


def qrange(bits: int) -> tuple[int, int]:
    if bits not in BITS:
        raise ValueError(f"unsupported weight bits {bits}; choose one of {BITS}")
    return -2 ** (bits - 1), 2 ** (bits - 1) - 1


def block_size(w: torch.Tensor, bits: int, group: int | None) -> int:
    """Weights per scale along the input dimension: the whole row for int8 (or group=None)."""
    if w.dim() != 2:
        raise ValueError(f"quantisers take (out, in) linear weights, got shape {tuple(w.shape)}")
    if group is None or bits == 8:
        return w.shape[1]
    if group < 1:
        raise ValueError(f"group size must be >= 1, got {group}")
    return min(group, w.shape[1])


def _padded(w: torch.Tensor, g: int) -> torch.Tensor:
    """(out, in) -> (out, ceil(in/g)*g) fp32 with zero columns; zeros change no block's scale."""
    pad = -w.shape[1] % g
    return F.pad(w.detach().float(), (0, pad)) if pad else w.detach().float()


def quantize_reference(w: torch.Tensor, bits: int, group: int | None = None) -> Quantized:
    """The rule of the module docstring in plain PyTorch."""
    qmin, qmax = qrange(bits)
    g = block_size(w, bits, group)
    out, cols = w.shape
    blocks = _padded(w, g).view(out, -1, g)
    smin = blocks.amin(-1).clamp(max=0) / float(qmin)
    smax = blocks.amax(-1).clamp(min=0) / float(qmax)
    scale = torch.where(smin > smax, smin, smax).clamp(min=EPS).to(torch.float16)
    q = torch.clamp(torch.round(blocks * (1.0 / scale.float()[..., None])), qmin, qmax)
    return Quantized(q.view(out, -1)[:, :cols].to(torch.int8).contiguous(), scale, bits, g)


@functools.cache
def _torchao_primitives():
    """torchao's quant_primitives module (imported once). Importing torchao logs a deprecation warning from
    torch's pytree registry (torchao registers an Enum as a pytree constant): not the user's concern, muted."""
    log = logging.getLogger("torch.utils._pytree")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torchao.quantization import quant_primitives
    finally:
        log.setLevel(level)
    return quant_primitives


def _quantize_torchao(w: torch.Tensor, bits: int, group: int | None) -> Quantized:
    qp = _torchao_primitives()
    qmin, qmax = qrange(bits)
    g = block_size(w, bits, group)
    out, cols = w.shape
    wp = _padded(w, g)
    scale, zero = qp.choose_qparams_affine(wp, qp.MappingType.SYMMETRIC_NO_CLIPPING_ERR, (1, g), torch.int8,
                                           qmin, qmax, eps=EPS, scale_dtype=torch.float16)
    scale = scale.reshape(out, -1)
    # The fp16 scale, widened: torchao would otherwise take 1/scale in fp16. The zero point is 0.
    q = qp.quantize_affine(wp, (1, g), scale.float(), zero.reshape(out, -1), torch.int8, qmin, qmax)
    return Quantized(q[:, :cols].contiguous(), scale, bits, g)


def torchao_available() -> bool:
    try:
        _torchao_primitives()
    except Exception:  # not installed, or built for another torch
        return False
    return True


def quantize(w: torch.Tensor, bits: int, group: int | None = None) -> Quantized:
    if not torch.isfinite(w).all():
        raise ValueError("cannot quantise non-finite weights (NaN/Inf): the predictor diverged or is corrupt")
    qz = _quantize_torchao(w, bits, group) if torchao_available() else quantize_reference(w, bits, group)
    if not torch.isfinite(qz.scale).all():
        raise ValueError(f"weights up to {float(w.abs().max()):.3g} overflow the fp16 scales of the {bits}-bit quantiser")
    return qz


def dequantize(qz: Quantized) -> torch.Tensor:
    out, cols = qz.q.shape
    g = qz.group
    nb = math.ceil(cols / g)
    q = F.pad(qz.q.float(), (0, nb * g - cols)).view(out, nb, g)
    return (q * qz.scale.float().view(out, nb, 1)).view(out, nb * g)[:, :cols].contiguous()


class FakeQuant(nn.Module):
    """Parametrization: the forward sees the dequantised weight, the gradient passes straight
    through to the latent fp32 weight (scales are taken from the weight, without gradient)."""

    def __init__(self, bits: int, group: int | None = None):
        super().__init__()
        qrange(bits)
        self.bits, self.group = bits, group

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        wq = dequantize(quantize_reference(w, self.bits, self.group)).to(w.dtype)
        return w + (wq - w).detach()

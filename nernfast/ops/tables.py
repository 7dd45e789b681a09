"""First-layer tables: the basic encoding's first predictor layer as three table look-ups.

An encoding with ``coordinate_blocks`` (the basic one) is the concatenation of three per-coordinate
blocks enc(p) = [e(p_0), e(p_1), e(p_2)] (each 2L wide for the basic encoding), so the first layer is
    W_0 enc(p) + b_0 = W_0[:, B_0] e(p_0) + W_0[:, B_1] e(p_1) + W_0[:, B_2] e(p_2) + b_0.
Each coordinate takes few distinct *normalised* values (with 'local' normalisation o / c_out(l)
depends on the layer, so we index the distinct fp32 values themselves, not the integer coordinates:
the union over layers stays small, e.g. 64 values for filters 0..63 of 16/32/64-channel layers).
With ``values_c`` the sorted distinct values of coordinate c,
    T = [e(values_0) W_0[:, B_0]^T + b_0 ; e(values_1) W_0[:, B_1]^T ; e(values_2) W_0[:, B_2]^T]   (U, H)
and row r's first-layer pre-activation is T[i_0(r)] + T[i_1(r)] + T[i_2(r)] with i_c(r) the row of
T holding coords[r, c]. ``e(values_c)`` is computed by the encoding module from the very fp32 values
the rows carry, so the table path is exact up to the order of the floating-point sum.

``coordinate_index(coords)`` (per coordinate tensor, cached: it does not depend on the weights) holds
the distinct values, the per-row table rows (global, int32 and int64) and the block-diagonal encoding
matrix E (U, 6L) (from ``encoding.encode_coordinate``) so that T = E @ W_0^T + bias rows is one matmul per call (differentiable in W_0, b_0).
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..encoding import PositionalEncoding


@dataclass
class CoordinateIndex:
    values: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # sorted distinct fp32 values per coordinate
    idx: torch.Tensor            # (n, 3) int64: rows of the concatenated table
    idx32: torch.Tensor          # (n, 3) int32 copy (Triton kernels)
    _enc_cache: dict = field(default_factory=dict, repr=False)

    @property
    def sizes(self) -> tuple[int, int, int]:
        return tuple(v.numel() for v in self.values)

    @property
    def num_entries(self) -> int:
        return sum(self.sizes)

    def block_encoding(self, encoding: PositionalEncoding) -> tuple[torch.Tensor, torch.Tensor]:
        """(E (U, out_features) block-diagonal, first-block selector (U,)) for ``encoding``, in the
        dtype of its blocks; cached per encoding object and state of its buffers."""
        key = (id(encoding), tuple((b.dtype, b.data_ptr(), b._version) for b in encoding.buffers()))
        hit = self._enc_cache.get(key)
        if hit is None:
            blocks = [encoding.encode_coordinate(v) for v in self.values]
            w, dtype, dev = blocks[0].shape[1], blocks[0].dtype, self.idx.device
            e = torch.zeros(self.num_entries, 3 * w, device=dev, dtype=dtype)
            sel = torch.zeros(self.num_entries, device=dev, dtype=dtype)
            r = 0
            for c, (v, blk) in enumerate(zip(self.values, blocks)):
                e[r:r + v.numel(), c * w:(c + 1) * w] = blk
                r += v.numel()
            sel[:self.sizes[0]] = 1
            hit = self._enc_cache[key] = (e, sel)
        return hit


_CACHE: OrderedDict[int, tuple[weakref.ref, int, CoordinateIndex]] = OrderedDict()
_CACHE_SIZE = 8


def build_coordinate_index(coords: torch.Tensor) -> CoordinateIndex:
    vals, inv = [], []
    offset = 0
    for c in range(3):
        v, i = torch.unique(coords[:, c], sorted=True, return_inverse=True)
        vals.append(v)
        inv.append(i + offset)
        offset += v.numel()
    idx = torch.stack(inv, 1)
    return CoordinateIndex(tuple(vals), idx, idx.to(torch.int32))


def coordinate_index(coords: torch.Tensor) -> CoordinateIndex:
    """Index of ``coords`` (n, 3), cached per tensor object (and its in-place version counter)."""
    key = id(coords)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is coords and hit[1] == coords._version:
        _CACHE.move_to_end(key)
        return hit[2]
    index = build_coordinate_index(coords.detach())
    _CACHE[key] = (weakref.ref(coords), coords._version, index)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return index


def first_layer_table(encoding: PositionalEncoding, weight: torch.Tensor, bias: torch.Tensor, index: CoordinateIndex,
                      compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """T (U, H) fp32, differentiable in ``weight`` (H, 6L) and ``bias`` (H,).

    With a 16-bit ``compute_dtype`` the encoding values and the weights are first rounded to it, as
    the plain path feeds them to its 16-bit matmul; the products and sums stay in fp32.
    """
    e, sel = index.block_encoding(encoding)
    w, b = weight, bias
    if compute_dtype is not None and compute_dtype != torch.float32:
        e = e.to(compute_dtype)
        w, b = w.to(compute_dtype), b.to(compute_dtype)
    return torch.addmm(sel[:, None] * b.float()[None, :], e.float(), w.float().t())


def has_coordinate_blocks(encoding: nn.Module) -> bool:
    """True for encodings with the per-coordinate block structure (``PositionalEncoding.coordinate_blocks``)."""
    return isinstance(encoding, PositionalEncoding) and encoding.coordinate_blocks

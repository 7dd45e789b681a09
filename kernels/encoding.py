"""Positional encodings of kernel coordinates computed in registers (Triton ``@jit`` helpers).

These helpers are inlined into the MLP kernels (``fused_mlp.py``, ``linear.py``); the encoding matrix
itself never goes to global memory. They reproduce ``nernfast.encoding`` exactly up to the sin/cos
implementation (libdevice on the GPU, numpy under the interpreter):

* ``ENC_BASIC`` (``BasicEncoding``): feature f = c*2L + 2j + s of row r is
  ``sin(p_c * freq_j)`` (s = 0) or ``cos(p_c * freq_j)`` (s = 1), with p = coords[r] (fp32) and
  ``freq = encoding.freqs`` (fp32, = float32(base**j * pi)), so the fp32 argument is bit-identical to
  the module's.
* ``ENC_FFN`` (``FFNEncoding``): with F features and ``B`` (F, 3) fp32,
  ``x_k = sum_c (2*pi*p_c) * B[k, c]``; feature f < F is ``sin(x_f)``, f >= F is ``cos(x_{f-F})``.
  The module computes ``(2*pi*coords) @ B.T``; only the order of the three-term sum may differ.
* ``ENC_TABLE``: no encoding; the first layer's pre-activation is gathered from per-coordinate tables
  (see ``nernfast.ops.tables``): ``h0[r] = T[idx[r, 0]] + T[idx[r, 1]] + T[idx[r, 2]]`` (bias folded
  into the first coordinate's block of T).

All offsets are 64-bit (row indices arrive as int64).
"""
from __future__ import annotations

import triton
import triton.language as tl

ENC_BASIC = 0
ENC_FFN = 1
ENC_TABLE = 2
# ``KernelEncoding.kind`` (nernfast.encoding) -> the mode computed here.
ENC_MODES = {"basic": ENC_BASIC, "ffn": ENC_FFN}

TWO_PI = tl.constexpr(6.283185307179586)  # float(2 * math.pi), as in FFNEncoding


@triton.jit
def encode_tile(coords_ptr, rows, rmask, feats, fmask, freq_ptr, L, MODE: tl.constexpr):
    """Encoding tile (len(rows), len(feats)) in fp32; zero where a row or feature is masked.

    rows: int64 row ids; feats: int64 feature ids; L: levels (basic) or features F (ffn).
    """
    m2 = rmask[:, None] & fmask[None, :]
    if MODE == 0:
        c = feats // (2 * L)
        j = (feats // 2) % L
        p = tl.load(coords_ptr + rows[:, None] * 3 + c[None, :], mask=m2, other=0.0)
        fr = tl.load(freq_ptr + j, mask=fmask, other=0.0)
        x = p * fr[None, :]
        v = tl.where((feats % 2)[None, :] == 0, tl.sin(x), tl.cos(x))
    else:
        k = feats % L
        x = tl.zeros((rows.shape[0], feats.shape[0]), dtype=tl.float32)
        for c in tl.static_range(3):
            p = tl.load(coords_ptr + rows * 3 + c, mask=rmask, other=0.0) * TWO_PI
            b = tl.load(freq_ptr + k * 3 + c, mask=fmask, other=0.0)
            x += p[:, None] * b[None, :]
        v = tl.where(feats[None, :] < L, tl.sin(x), tl.cos(x))
    return tl.where(m2, v, 0.0)


@triton.jit
def table_tile(idx_ptr, rows, rmask, cols, cmask, tab_ptr, stride, COL_MASK: tl.constexpr):
    """First-layer pre-activation from tables: (len(rows), len(cols)) fp32, zero where masked.

    idx (n, 3) int32 rows of the concatenated table ``tab`` (U, >= len(cols)) fp32 with row ``stride``;
    ``COL_MASK=False`` when every column in ``cols`` exists (padded tables: unmasked, vector loads).
    """
    if COL_MASK:
        m2 = rmask[:, None] & cmask[None, :]
    else:
        m2 = rmask[:, None]
    acc = tl.zeros((rows.shape[0], cols.shape[0]), dtype=tl.float32)
    for c in tl.static_range(3):
        i = tl.load(idx_ptr + rows * 3 + c, mask=rmask, other=0).to(tl.int64)
        acc += tl.load(tab_ptr + i[:, None] * stride + cols[None, :], mask=m2, other=0.0)
    return acc

"""Fused NeRN predictor: coordinates -> positional encoding -> every MLP layer -> K*K outputs.

Maths (per row r, ``num_blocks`` = NMID + 2 linear layers, H hidden, KK = K*K outputs):
    h_0 = relu(W_0 enc(p_r) + b_0)            (or, for the basic encoding, the table gather below)
    h_l = relu(W_l h_{l-1} + b_l),  l = 1..NMID
    out = W_f h_NMID + b_f
Table form of the first layer (``ENC_TABLE``, basic encoding only): enc(p) is the concatenation of
three per-coordinate blocks, so W_0 enc(p) + b_0 = T[i_0] + T[i_1] + T[i_2] with the per-coordinate
tables of ``nernfast.ops.tables`` (bias folded into the first block). Exact up to summation order.

Padding: each call packs the weights into zero-padded copies (``pack_weights``; cached by the caller
while the parameters do not change): hidden width P (a power of two >= H for the fused path, H
rounded up to 16 for the layered path), encoding width rounded up to 64, K*K outputs to a power of
two >= 16. Zero rows/columns keep the padded activations at relu(0) = 0, so the kernels load whole,
aligned tiles without masks (vectorised loads, compile-time strides) and mask only rows and the
K*K outputs they store.

Two forward paths, one backward:

* **fused** (``_fused_mlp_fwd_kernel``, one launch): a program owns BLOCK_M rows and keeps their
  activations in registers for the whole MLP: the encoding tile is computed in registers (or the
  tables gathered), and the hidden layers run in *expand/contract pairs* so no layer ever needs a
  slice of a register tensor: an "expand" layer produces its output BLOCK_N columns at a time from
  the full-width input h (BLOCK_M x P), and each chunk is immediately consumed by the next
  ("contract") layer, which accumulates its full-width pre-activation (BLOCK_M x P, fp32). An odd
  last hidden layer expands straight into the final K*K layer. Nothing but the K*K outputs goes to
  global memory unless activations are saved for the backward (``SAVE``). Width limit: h and acc
  must stay in registers, so the fused path is used for **H <= FUSED_MAX_HIDDEN = 512** (P <= 512,
  BLOCK_M * P <= 16384). Padding to P costs up to P/H extra MMA work on one dimension of each
  hidden product (the chunk loops stop at H), e.g. 1.6x at H = 320.
* **layered** (``layered_forward``): H > 512 (or ``path="layered"``): one tiled GEMM per layer
  (``linear.py``) with bias + ReLU fused in the epilogue; the first GEMM computes the encoding in
  registers as its A operand (or ``_table_relu_kernel`` gathers the tables). Activations go to
  global memory (in row chunks when nothing is saved).
* **backward** (``mlp_backward``): **saves** the post-ReLU activations of the rows that carry
  gradient (the forward's ``SAVE``; (NMID+1) x n x P in the compute dtype: 4096 rows x 1536 x 7
  layers x 2 B = 88 MB at the largest), then per layer two GEMMs from ``linear.py``: the weight
  gradient dW_l = dZ_l^T h_{l-1} (split-K over rows, fp32 partials, no atomics) and the input
  gradient dZ_{l-1} = (dZ_l W_l) * [h_{l-1} > 0] with the ReLU mask fused in the epilogue. The
  first layer's weight gradient recomputes the encoding in registers (B operand) instead of saving
  the n x 240 matrix; with tables, dT = scatter-add of dZ_0 (``index_add_``) and autograd carries dT
  to W_0 and b_0 through the small table product. Save rather than recompute: the gradient rows are
  a small subset (4096 of 30k-1.2M), so their activations are small, and a recompute would still
  have to materialise every layer's activation for the reverse sweep (registers hold one layer at a
  time), i.e. it would only add a forward pass.

Precision: operands in the compute dtype (fp32, fp16, bf16), fp32 accumulation, bias/ReLU in fp32.
fp32 products use ``dot_precision`` "ieee" (exact fp32 FMA) or "tf32" (tensor cores, 10-bit
mantissa inputs); ``nernfast.ops.predict`` picks tf32 exactly when PyTorch's own fp32 matmuls may use
it (``torch.get_float32_matmul_precision() != "highest"``). Under ``TRITON_INTERPRET=1`` bf16
arithmetic is unavailable: ``fused_mlp`` runs bf16 inputs through the fp32 path and rounds the result.

Offsets are 64-bit (``program_id`` cast before multiplying), so any row count works.
Autotuning (small config spaces) is on for compiled kernels unless ``NERNFAST_AUTOTUNE=0`` (then the
first config is used); the interpreter uses fixed small blocks.
Chain: ``_fused_mlp_fwd_kernel`` / ``_table_relu_kernel`` -> ``fused_forward`` / ``layered_forward``
-> ``mlp_forward``; ``mlp_backward`` -> the torch.library custom ops ``nernfast::fused_mlp`` (rows and
saved activations; autograd through ``nernfast::fused_mlp_backward``) and ``nernfast::fused_mlp_into``
(no-grad, into a given buffer), each with a fake kernel for torch.compile -> ``fused_mlp``
(functional wrapper).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import linear as _linear
from .encoding import ENC_BASIC, ENC_FFN, ENC_MODES, ENC_TABLE, encode_tile, table_tile
from .linear import INTERPRET, linear, triton_dtype

FUSED_MAX_HIDDEN = 512  # switch point: above this width the layered (per-layer GEMM) path is used
MAX_OUTPUTS = 64        # K*K <= 64 (K <= 8)


@triton.jit
def _fused_mlp_fwd_kernel(x_ptr, first_ptr, b0_ptr, wm_ptr, bm_ptr, wf_ptr, bf_ptr, freq_ptr,
                          out_ptr, act_ptr,
                          N, H, F, KK, NMID, L,
                          MODE: tl.constexpr, SAVE: tl.constexpr, ODD: tl.constexpr,
                          DT: tl.constexpr, DOT_PREC: tl.constexpr, HP: tl.constexpr, FP: tl.constexpr,
                          KP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_F: tl.constexpr):
    # Padded operands: first (HP, FP) or table (U, HP) fp32; b0 (HP,); wm (NMID, HP, HP); bm (NMID, HP);
    # wf (KP, HP); bf (KP,). act (NMID+1, N, HP). H, F, KK: true sizes (loop bounds, output mask).
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < N
    rm2 = rmask[:, None]
    cols = tl.arange(0, HP)
    # ---- layer 0: encoding (in registers) x W_0^T, or the table gather ----
    if MODE == 2:
        acc = table_tile(x_ptr, rows, rmask, cols, cols, first_ptr, HP, False)
    else:
        acc = tl.zeros((BLOCK_M, HP), dtype=tl.float32)
        for f0 in range(0, F, BLOCK_F):
            feats = f0 + tl.arange(0, BLOCK_F)
            e = encode_tile(x_ptr, rows, rmask, feats, feats < F, freq_ptr, L, MODE)
            w = tl.load(first_ptr + cols[None, :] * FP + feats[:, None])
            acc = tl.dot(e.to(DT), w, acc, input_precision=DOT_PREC)
        acc += tl.load(b0_ptr + cols).to(tl.float32)[None, :]
    h = tl.maximum(acc, 0.0).to(DT)
    if SAVE:
        tl.store(act_ptr + rows[:, None] * HP + cols[None, :], h, mask=rm2)
    # ---- hidden layers in expand/contract pairs ----
    for p in range(NMID // 2):
        la = 2 * p
        wa_ptr = wm_ptr + la * (HP * HP)
        wb_ptr = wa_ptr + HP * HP
        acc = tl.zeros((BLOCK_M, HP), dtype=tl.float32)
        for n0 in range(0, H, BLOCK_N):
            ncols = n0 + tl.arange(0, BLOCK_N)
            wa = tl.load(wa_ptr + ncols[None, :] * HP + cols[:, None])  # (HP, BLOCK_N) = W_a^T[:, chunk]
            c = tl.dot(h, wa, input_precision=DOT_PREC)
            c += tl.load(bm_ptr + la * HP + ncols).to(tl.float32)[None, :]
            c = tl.maximum(c, 0.0).to(DT)
            if SAVE:
                tl.store(act_ptr + ((la + 1).to(tl.int64) * N + rows)[:, None] * HP + ncols[None, :], c, mask=rm2)
            wb = tl.load(wb_ptr + cols[None, :] * HP + ncols[:, None])  # (BLOCK_N, HP) = W_b^T[chunk, :]
            acc = tl.dot(c, wb, acc, input_precision=DOT_PREC)
        acc += tl.load(bm_ptr + (la + 1) * HP + cols).to(tl.float32)[None, :]
        h = tl.maximum(acc, 0.0).to(DT)
        if SAVE:
            tl.store(act_ptr + ((la + 2).to(tl.int64) * N + rows)[:, None] * HP + cols[None, :], h, mask=rm2)
    # ---- last hidden layer (if NMID is odd) expands straight into the final layer ----
    kk = tl.arange(0, KP)
    if ODD:
        la = NMID - 1
        wa_ptr = wm_ptr + la * (HP * HP)
        o = tl.zeros((BLOCK_M, KP), dtype=tl.float32)
        for n0 in range(0, H, BLOCK_N):
            ncols = n0 + tl.arange(0, BLOCK_N)
            wa = tl.load(wa_ptr + ncols[None, :] * HP + cols[:, None])
            c = tl.dot(h, wa, input_precision=DOT_PREC)
            c += tl.load(bm_ptr + la * HP + ncols).to(tl.float32)[None, :]
            c = tl.maximum(c, 0.0).to(DT)
            if SAVE:
                tl.store(act_ptr + ((la + 1).to(tl.int64) * N + rows)[:, None] * HP + ncols[None, :], c, mask=rm2)
            wf = tl.load(wf_ptr + kk[None, :] * HP + ncols[:, None])  # (BLOCK_N, KP)
            o = tl.dot(c, wf, o, input_precision=DOT_PREC)
    else:
        wf = tl.load(wf_ptr + kk[None, :] * HP + cols[:, None])  # (HP, KP)
        o = tl.dot(h, wf, input_precision=DOT_PREC)
    o += tl.load(bf_ptr + kk).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * KK + kk[None, :], o.to(out_ptr.dtype.element_ty),
             mask=rm2 & (kk < KK)[None, :])


@triton.jit
def _table_relu_kernel(idx_ptr, tab_ptr, out_ptr, N, P,
                       BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    """Layered path, first layer from tables: out (N, P) = relu(T[i0] + T[i1] + T[i2]), T (U, P) fp32."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H).to(tl.int64)
    rmask = rows < N
    cmask = cols < P
    h = tl.maximum(table_tile(idx_ptr, rows, rmask, cols, cmask, tab_ptr, P, True), 0.0)
    tl.store(out_ptr + rows[:, None] * P + cols[None, :], h.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


# ---- configuration ------------------------------------------------------------------------------
_INTERPRET_FUSED = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_F=32)


def _fused_configs(p: int) -> list:
    """Small search space per padded width; BLOCK_M * P <= 16384 keeps h and acc in registers."""
    c = triton.Config
    if p <= 128:
        cand = [(64, 32, 4, 2), (128, 32, 8, 2), (64, 64, 4, 3)]
    elif p <= 256:
        cand = [(64, 32, 8, 2), (64, 64, 8, 2), (32, 32, 4, 2)]
    else:
        cand = [(32, 32, 8, 2), (32, 64, 8, 2), (16, 32, 4, 2)]
    return [c(dict(BLOCK_M=m, BLOCK_N=min(n, p), BLOCK_F=32), num_warps=w, num_stages=s) for m, n, w, s in cand]


@functools.lru_cache(maxsize=None)
def _fused_tuned(p: int):
    # Re-running a config writes the same outputs (no atomics, no accumulation into inputs).
    return triton.autotune(_fused_configs(p), key=["H", "F", "KK", "NMID", "MODE", "SAVE", "DT", "DOT_PREC"])(
        _fused_mlp_fwd_kernel)


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


@dataclass(frozen=True)
class MLPSpec:
    """Static description of one call (everything but the tensors)."""
    mode: int             # ENC_BASIC, ENC_FFN or ENC_TABLE
    levels: int           # L (basic) or F (ffn features); unused for tables
    in_features: int      # encoding width (first-layer fan-in); 0 for tables
    hidden: int
    outputs: int          # K*K
    nmid: int             # hidden-to-hidden layers (num_blocks - 2)
    dtype: torch.dtype    # compute dtype of the operands
    dot_precision: str    # fp32 products: "ieee" or "tf32"
    path: str             # "fused" or "layered"

    @property
    def dt(self):
        return triton_dtype(self.dtype)

    @property
    def width(self) -> int:
        """Padded hidden width P of the packed weights and saved activations."""
        return _pow2(self.hidden) if self.path == "fused" else _round_up(self.hidden, 16)

    @property
    def in_padded(self) -> int:
        return _round_up(max(self.in_features, 1), 64)

    @property
    def out_padded(self) -> int:
        return _pow2(self.outputs)


@dataclass
class Packed:
    """Zero-padded weights of one call (see module doc); ``first``/``b0`` are None in table mode."""
    first: torch.Tensor | None   # (P, FP) compute dtype
    b0: torch.Tensor | None      # (P,)
    wm: torch.Tensor             # (max(NMID, 1), P, P)
    bm: torch.Tensor             # (max(NMID, 1), P)
    wf: torch.Tensor             # (KP, P)
    bf: torch.Tensor             # (KP,)


def pack_weights(spec: MLPSpec, first: torch.Tensor | None, b0: torch.Tensor | None,
                 mids: list[tuple[torch.Tensor, torch.Tensor]], wf: torch.Tensor, bf: torch.Tensor) -> Packed:
    """Zero-padded copies in the compute dtype (no autograd)."""
    P, H, KK, dt = spec.width, spec.hidden, spec.outputs, spec.dtype
    dev = wf.device
    with torch.no_grad():
        firstp = b0p = None
        if spec.mode != ENC_TABLE:
            firstp = torch.zeros(P, spec.in_padded, device=dev, dtype=dt)
            firstp[:H, :spec.in_features] = first
            b0p = torch.zeros(P, device=dev, dtype=dt)
            b0p[:H] = b0
        wmp = torch.zeros(max(len(mids), 1), P, P, device=dev, dtype=dt)
        bmp = torch.zeros(max(len(mids), 1), P, device=dev, dtype=dt)
        for l, (w, b) in enumerate(mids):
            wmp[l, :H, :H] = w
            bmp[l, :H] = b
        wfp = torch.zeros(spec.out_padded, P, device=dev, dtype=dt)
        wfp[:KK, :H] = wf
        bfp = torch.zeros(spec.out_padded, device=dev, dtype=dt)
        bfp[:KK] = bf
    return Packed(firstp, b0p, wmp, bmp, wfp, bfp)


def pad_table(table: torch.Tensor, spec: MLPSpec) -> torch.Tensor:
    """(U, H) fp32 -> (U, P) fp32, zero columns (no autograd)."""
    out = table.new_zeros(table.shape[0], spec.width)
    with torch.no_grad():
        out[:, :spec.hidden] = table
    return out


def choose_path(hidden: int, path: str = "auto") -> str:
    if path == "auto":
        return "fused" if hidden <= FUSED_MAX_HIDDEN else "layered"
    if path not in ("fused", "layered"):
        raise ValueError(f"unknown path {path!r}; choose 'auto', 'fused' or 'layered'")
    if path == "fused" and hidden > FUSED_MAX_HIDDEN:
        raise ValueError(f"the fused path holds a row block's activations in registers: hidden <= {FUSED_MAX_HIDDEN}")
    return path


# ---- forward launchers ----------------------------------------------------------------------------
def fused_forward(x, first, pk: Packed, freq, spec: MLPSpec, out: torch.Tensor, acts: torch.Tensor | None) -> None:
    """first: the padded table (table mode) or ``pk.first``."""
    n = x.shape[0]
    P = spec.width
    args = (x, first, pk.b0 if pk.b0 is not None else first, pk.wm, pk.bm, pk.wf, pk.bf, freq, out,
            acts if acts is not None else out, n, spec.hidden, spec.in_features, spec.outputs, spec.nmid, spec.levels)
    flags = dict(MODE=spec.mode, SAVE=acts is not None, ODD=spec.nmid % 2 == 1, DT=spec.dt,
                 DOT_PREC=spec.dot_precision, HP=P, FP=spec.in_padded, KP=spec.out_padded)
    if INTERPRET or not _linear.AUTOTUNE:
        c0 = _fused_configs(P)[0]
        cfg = dict(_INTERPRET_FUSED) if INTERPRET else dict(c0.kwargs, num_warps=c0.num_warps, num_stages=c0.num_stages)
        cfg["BLOCK_N"] = min(cfg["BLOCK_N"], P)
        _fused_mlp_fwd_kernel[(triton.cdiv(n, cfg["BLOCK_M"]),)](*args, **flags, **cfg)
    else:
        _fused_tuned(P)[lambda meta: (triton.cdiv(n, meta["BLOCK_M"]),)](*args, **flags)


def _table_relu(idx, tab, out):
    n, p = out.shape
    bm, bh = (16, 32) if INTERPRET else (64, 128)
    _table_relu_kernel[(triton.cdiv(n, bm), triton.cdiv(p, bh))](idx, tab, out, n, p, BLOCK_M=bm, BLOCK_H=bh)


def layered_forward(x, first, pk: Packed, freq, spec: MLPSpec, out: torch.Tensor,
                    acts: torch.Tensor | None, chunk: int = 65536) -> None:
    """One GEMM per layer on padded widths; acts (NMID+1, n, P) are written when given, else row chunks
    ping-pong between two buffers."""
    n, P = x.shape[0], spec.width
    if acts is None and n > chunk:
        for s in range(0, n, chunk):
            layered_forward(x[s:s + chunk], first, pk, freq, spec, out[s:s + chunk], None, chunk)
        return
    if acts is None:
        bufs = torch.empty(min(2, spec.nmid + 1), n, P, device=x.device, dtype=spec.dtype)
        buf = lambda l: bufs[l % bufs.shape[0]]  # noqa: E731
    else:
        buf = lambda l: acts[l]  # noqa: E731
    common = dict(compute_dtype=spec.dtype, dot_precision=spec.dot_precision, out_dtype=spec.dtype)
    if spec.mode == ENC_TABLE:
        _table_relu(x, first, buf(0))
    else:
        linear(None, first.t(), n, P, spec.in_padded, out=buf(0), bias=pk.b0, relu=True,
               enc=(x, freq, spec.levels, spec.mode, spec.in_features), enc_operand="a", **common)
    for l in range(spec.nmid):
        linear(buf(l), pk.wm[l].t(), n, P, P, out=buf(l + 1), bias=pk.bm[l], relu=True, **common)
    linear(buf(spec.nmid), pk.wf[:spec.outputs].t(), n, spec.outputs, P, out=out, bias=pk.bf, **common)


def mlp_forward(x, first, pk: Packed, freq, spec: MLPSpec, save: bool,
                out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """rows (n, KK) and, when ``save``, the activations (NMID+1, n, P). ``first``: padded table or pk.first."""
    n = x.shape[0]
    if out is None:
        out = torch.empty(n, spec.outputs, device=x.device, dtype=spec.dtype)
    acts = torch.empty(spec.nmid + 1, n, spec.width, device=x.device, dtype=spec.dtype) if save else None
    if n == 0:
        return out, acts
    (fused_forward if spec.path == "fused" else layered_forward)(x, first, pk, freq, spec, out, acts)
    return out, acts


# ---- backward ------------------------------------------------------------------------------------
def _split_k(m: int, n: int, k: int, device: torch.device) -> int:
    """Row splits for a weight gradient (reduction over k rows) so that the grid fills the GPU."""
    if INTERPRET:
        return 2 if k >= 64 else 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    tiles = triton.cdiv(m, 128) * triton.cdiv(n, 128)
    return max(1, min(triton.cdiv(2 * sms, tiles), triton.cdiv(k, 512)))


def _weight_grad(dz: torch.Tensor, a: torch.Tensor | None, n_in: int, spec: MLPSpec, enc=None) -> torch.Tensor:
    """dW (out, in) = dz^T @ a over rows; dz (n, out), a (n, in) or the encoding. fp32 result."""
    n, n_out = dz.shape
    split = _split_k(n_out, n_in, n, dz.device)
    return linear(dz.t(), a, n_out, n_in, n, out_dtype=torch.float32, enc=enc, enc_operand="b" if enc else None,
                  compute_dtype=spec.dtype, dot_precision=spec.dot_precision, split_k=split)


def mlp_backward(g, x, pk: Packed, freq, acts, spec: MLPSpec, table_rows: int = 0):
    """fp32 gradients (d_first, d_b0, [(d_w, d_b) per hidden layer], d_wf, d_bf) for upstream g (n, KK).

    Works on the width Hs = H rounded up to 16 (every column of ``acts`` below Hs was written; the
    padding is zero), so loads stay aligned; results are sliced to the true shapes.
    """
    n, H, KK = x.shape[0], spec.hidden, spec.outputs
    hs = _round_up(H, 16)
    g = g.to(spec.dtype).contiguous()
    common = dict(compute_dtype=spec.dtype, dot_precision=spec.dot_precision, out_dtype=spec.dtype)
    act = lambda l: acts[l][:, :hs]  # noqa: E731
    d_wf = _weight_grad(g, act(spec.nmid), hs, spec)[:, :H]
    d_bf = g.float().sum(0)
    dz = linear(g, pk.wf[:KK, :hs], n, hs, KK, mask=act(spec.nmid), **common)
    mids = [None] * spec.nmid
    for l in reversed(range(spec.nmid)):
        d_w = _weight_grad(dz, act(l), hs, spec)[:H, :H]
        mids[l] = (d_w, dz[:, :H].float().sum(0))
        dz = linear(dz, pk.wm[l, :hs, :hs], n, hs, hs, mask=act(l), **common)
    if spec.mode == ENC_TABLE:
        d_first = torch.zeros(table_rows, H, device=g.device, dtype=torch.float32)
        dzf = dz[:, :H].float()
        for c in range(3):
            d_first.index_add_(0, x[:, c].long(), dzf)
        return d_first, None, mids, d_wf, d_bf
    enc = (x, freq, spec.levels, spec.mode, spec.in_features)
    d_w0 = _weight_grad(dz, None, spec.in_features, spec, enc=enc)[:H]
    return d_w0, dz[:, :H].float().sum(0), mids, d_wf, d_bf


def make_spec(mode: int, levels: int, first: torch.Tensor, wf: torch.Tensor, nmid: int, dot_precision: str,
              path: str = "auto") -> MLPSpec:
    H, KK = wf.shape[1], wf.shape[0]
    if KK > MAX_OUTPUTS:
        raise ValueError(f"K*K = {KK} outputs per row; the kernels support K*K <= {MAX_OUTPUTS} (K <= 8)")
    in_features = 0 if mode == ENC_TABLE else first.shape[1]
    return MLPSpec(mode, levels, in_features, H, KK, nmid, wf.dtype, dot_precision, choose_path(H, path))


# ---- the custom ops (torch.library) --------------------------------------------------------------
# Tensor arguments only, so torch.compile traces them (fake kernels below) and opcheck can test them:
# the spec travels as ints and strings, the padded compute copies (``Packed``, built and cached by the
# caller) as inputs beside the autograd inputs first/b0/wf/bf/mids. The forward returns the saved
# activations (empty when nothing is saved) as a second output for the backward op.
_FWD_SCHEMA = ("(Tensor x, Tensor freq, Tensor first, Tensor? b0, Tensor wf, Tensor bf, Tensor[] mids, "
               "Tensor? p_first, Tensor? p_b0, Tensor p_wm, Tensor p_bm, Tensor p_wf, Tensor p_bf, "
               "int enc_mode, int levels, str dot_precision, str path, bool save) -> (Tensor, Tensor)")
_BWD_SCHEMA = ("(Tensor g, Tensor x, Tensor freq, Tensor acts, Tensor p_wm, Tensor p_wf, int enc_mode, int levels, "
               "int in_features, int hidden, int table_rows, str dot_precision, str path) -> Tensor[]")
_INTO_SCHEMA = ("(Tensor x, Tensor freq, Tensor first, Tensor wf, Tensor? p_first, Tensor? p_b0, Tensor p_wm, "
                "Tensor p_bm, Tensor p_wf, Tensor p_bf, int nmid, int enc_mode, int levels, str dot_precision, "
                "str path, Tensor(a!) out) -> ()")


@torch.library.custom_op("nernfast::fused_mlp", mutates_args=(), schema=_FWD_SCHEMA)
def _fused_mlp_op(x, freq, first, b0, wf, bf, mids, p_first, p_b0, p_wm, p_bm, p_wf, p_bf, enc_mode, levels,
                  dot_precision, path, save):
    spec = make_spec(enc_mode, levels, first, wf, len(mids) // 2, dot_precision, path)
    pk = Packed(p_first, p_b0, p_wm, p_bm, p_wf, p_bf)
    rows, acts = mlp_forward(x, pad_table(first, spec) if enc_mode == ENC_TABLE else pk.first, pk, freq, spec, save)
    return rows, acts if acts is not None else rows.new_empty(0)


@_fused_mlp_op.register_fake
def _(x, freq, first, b0, wf, bf, mids, p_first, p_b0, p_wm, p_bm, p_wf, p_bf, enc_mode, levels, dot_precision,
      path, save):
    n = x.shape[0]
    rows = wf.new_empty((n, wf.shape[0]))
    acts = wf.new_empty((len(mids) // 2 + 1, n, p_wm.shape[-1]) if save else (0,))
    return rows, acts


@torch.library.custom_op("nernfast::fused_mlp_backward", mutates_args=(), schema=_BWD_SCHEMA)
def _fused_mlp_backward_op(g, x, freq, acts, p_wm, p_wf, enc_mode, levels, in_features, hidden, table_rows,
                           dot_precision, path):
    spec = MLPSpec(enc_mode, levels, in_features, hidden, g.shape[1], acts.shape[0] - 1, p_wf.dtype, dot_precision, path)
    d_first, d_b0, mids, d_wf, d_bf = mlp_backward(g, x, Packed(None, None, p_wm, None, p_wf, None), freq, acts, spec,
                                                   table_rows)
    d_b0 = d_b0 if d_b0 is not None else d_first.new_empty(0)
    return [d_first, d_b0, d_wf, d_bf] + [t for wb in mids for t in wb]


@_fused_mlp_backward_op.register_fake
def _(g, x, freq, acts, p_wm, p_wf, enc_mode, levels, in_features, hidden, table_rows, dot_precision, path):
    f32 = dict(dtype=torch.float32)
    kk, table = g.shape[1], enc_mode == ENC_TABLE
    out = [g.new_empty((table_rows, hidden) if table else (hidden, in_features), **f32),
           g.new_empty((0,) if table else (hidden,), **f32), g.new_empty((kk, hidden), **f32), g.new_empty((kk,), **f32)]
    for _ in range(acts.shape[0] - 1):
        out += [g.new_empty((hidden, hidden), **f32), g.new_empty((hidden,), **f32)]
    return out


def _setup_context(ctx, inputs, output) -> None:
    x, freq, first, b0, wf, bf, mids, p_first, p_b0, p_wm, p_bm, p_wf, p_bf, enc_mode, levels, dot_prec, path, _ = inputs
    ctx.save_for_backward(x, freq, output[1], p_wm, p_wf)
    ctx.args = (enc_mode, levels, 0 if enc_mode == ENC_TABLE else first.shape[1], wf.shape[1], first.shape[0], dot_prec,
                choose_path(wf.shape[1], path))
    ctx.dtype = wf.dtype


def _backward(ctx, g_rows, g_acts):
    x, freq, acts, p_wm, p_wf = ctx.saved_tensors
    d_first, d_b0, d_wf, d_bf, *d_mids = torch.ops.nernfast.fused_mlp_backward(g_rows, x, freq, acts, p_wm, p_wf,
                                                                               *ctx.args)
    table, dt = ctx.args[0] == ENC_TABLE, ctx.dtype
    # The table stays fp32 (its own autograd carries it to W_0, b_0); the rest in the weights' dtype.
    return (None, None, d_first if table else d_first.to(dt), None if table else d_b0.to(dt), d_wf.to(dt),
            d_bf.to(dt), [t.to(dt) for t in d_mids], None, None, None, None, None, None, None, None, None, None, None)


_fused_mlp_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("nernfast::fused_mlp_into", mutates_args=("out",), schema=_INTO_SCHEMA)
def _fused_mlp_into_op(x, freq, first, wf, p_first, p_b0, p_wm, p_bm, p_wf, p_bf, nmid, enc_mode, levels,
                       dot_precision, path, out) -> None:
    spec = make_spec(enc_mode, levels, first, wf, nmid, dot_precision, path)
    pk = Packed(p_first, p_b0, p_wm, p_bm, p_wf, p_bf)
    mlp_forward(x, pad_table(first, spec) if enc_mode == ENC_TABLE else pk.first, pk, freq, spec, False, out)


@_fused_mlp_into_op.register_fake
def _(x, freq, first, wf, p_first, p_b0, p_wm, p_bm, p_wf, p_bf, nmid, enc_mode, levels, dot_precision, path, out):
    return None


def fused_mlp(x: torch.Tensor, first: torch.Tensor, b0: torch.Tensor | None,
              mids: list[tuple[torch.Tensor, torch.Tensor]], wf: torch.Tensor, bf: torch.Tensor,
              freq: torch.Tensor, *, mode: int, levels: int = 1, dot_precision: str = "ieee", path: str = "auto",
              out: torch.Tensor | None = None, packed: Packed | None = None) -> torch.Tensor:
    """Rows (n, K*K) of the predictor for n coordinate rows.

    x: coords (n, 3) fp32 (``ENC_BASIC``/``ENC_FFN``) or table indices (n, 3) int32 (``ENC_TABLE``).
    first: W_0 (H, in) in the compute dtype, or the table (U, H) fp32 (bias folded in; b0 = None).
    mids: [(W_l (H, H), b_l (H,))] hidden layers; wf (KK, H), bf (KK,): the compute dtype is wf's.
    freq: ``KernelEncoding.params`` of the encoding (nernfast.encoding): the basic encoding's
        frequencies (L,) or the FFN's B (F, 3), fp32 (unused for tables); mode: ``ENC_MODES[kind]``.
    out: optional (n, KK) destination (e.g. a view of the flat conv-weight buffer); no-grad calls only.
    packed: ``pack_weights`` of these weights for this spec, if the caller caches it.
    Under the interpreter, bf16 runs through the fp32 path (see module doc).
    """
    dtype = wf.dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"unsupported predictor dtype {dtype}; use float32, float16 or bfloat16")
    if INTERPRET and dtype == torch.bfloat16:
        up = lambda t: None if t is None or t.dtype != torch.bfloat16 else t.float()  # noqa: E731
        r = fused_mlp(x, up(first) if mode != ENC_TABLE else first, up(b0), [(up(w), up(b)) for w, b in mids],
                      up(wf), up(bf), freq, mode=mode, levels=levels, dot_precision=dot_precision, path=path)
        return r.to(dtype) if out is None else out.copy_(r)
    spec = make_spec(mode, levels, first, wf, len(mids), dot_precision, path)
    tensors = [first, b0, wf, bf] + [t for wb in mids for t in wb]
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if out is not None:
        if save:
            raise ValueError("out= is for no-grad calls (materialisation); with autograd let the op allocate")
        if out.shape != (x.shape[0], spec.outputs) or not out.is_contiguous() or out.device != x.device:
            raise ValueError(f"out must be a contiguous ({x.shape[0]}, {spec.outputs}) tensor on {x.device}, got "
                             f"{tuple(out.shape)} on {out.device}{'' if out.is_contiguous() else ' (non-contiguous)'}")
    pk = packed if packed is not None else pack_weights(spec, first, b0, mids, wf, bf)
    x, freq = x.contiguous(), freq.contiguous()
    if out is not None:
        torch.ops.nernfast.fused_mlp_into(x, freq, first, wf, pk.first, pk.b0, pk.wm, pk.bm, pk.wf, pk.bf, spec.nmid,
                                          mode, levels, dot_precision, spec.path, out)
        return out
    rows, _ = torch.ops.nernfast.fused_mlp(x, freq, first, b0, wf, bf, [t for wb in mids for t in wb], pk.first,
                                           pk.b0, pk.wm, pk.bm, pk.wf, pk.bf, mode, levels, dot_precision, spec.path,
                                           save)
    return rows


__all__ = ["ENC_BASIC", "ENC_FFN", "ENC_MODES", "ENC_TABLE", "FUSED_MAX_HIDDEN", "MLPSpec", "Packed",
           "fused_mlp", "make_spec", "mlp_backward", "mlp_forward", "pack_weights"]

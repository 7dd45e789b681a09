"""Fused NeRN predictor: coordinates -> positional encoding -> every MLP layer -> K*K outputs.

Maths (per row r, ``num_blocks`` = NMID + 2 linear layers, H hidden, KK = K*K outputs):
    h_0 = relu(W_0 enc(p_r) + b_0)            (or, for the basic encoding, the table gather below)
    h_l = relu(W_l h_{l-1} + b_l),  l = 1..NMID
    out = W_f h_NMID + b_f
Table form of the first layer (``ENC_TABLE``, basic encoding only): enc(p) is the concatenation of
three per-coordinate blocks, so W_0 enc(p) + b_0 = T[i_0] + T[i_1] + T[i_2] with the per-coordinate
tables of ``nernfast.ops.tables`` (bias folded into the first block). Exact up to summation order.

Two forward paths, one backward:

* **fused** (``_fused_mlp_fwd_kernel``, one launch): a program owns BLOCK_M rows and keeps their
  activations in registers for the whole MLP: the encoding tile is computed in registers (or the
  tables gathered), and the hidden layers run in *expand/contract pairs* so no layer ever needs a
  slice of a register tensor: an "expand" layer produces its output BLOCK_N columns at a time from
  the full-width input h (M x H_PAD), and each chunk is immediately consumed by the next
  ("contract") layer, which accumulates its full-width pre-activation (M x H_PAD, fp32). An odd last
  hidden layer expands straight into the final K*K layer. Nothing but the K*K outputs goes to
  global memory unless activations are saved for the backward (``SAVE``). Width limit: the full-
  width tiles h and acc are padded to the next power of two H_PAD and must stay in registers, so
  the fused path is used for **H <= FUSED_MAX_HIDDEN = 512** (H_PAD <= 512; BLOCK_M * H_PAD <=
  16384 in every config). Padding costs up to H_PAD/H extra MMA work on one dimension of each
  hidden product (e.g. 1.6x at H = 320).
* **layered** (``layered_forward``): H > 512 (or ``path="layered"``): one tiled GEMM per layer
  (``linear.py``) with bias + ReLU fused in the epilogue; the first GEMM computes the encoding in
  registers as its A operand (or a gather kernel applies the tables). Activations go to global
  memory (chunked by rows when nothing is saved).
* **backward** (``mlp_backward``): **saves** the post-ReLU activations of the rows that carry
  gradient (forward with ``SAVE``; (NMID+1) x n x H in the compute dtype — 4096 rows x H 1536 x 7
  layers x 2 B = 88 MB at the largest), and runs per layer two GEMMs from ``linear.py``: the
  weight gradient dW_l = dZ_l^T h_{l-1} (split-K over rows, fp32) and the input gradient
  dZ_{l-1} = (dZ_l W_l) * [h_{l-1} > 0] with the ReLU mask fused in the epilogue. The first
  layer's weight gradient recomputes the encoding in registers (B operand) instead of saving the
  n x 240 matrix; with tables, dT = scatter-add of dZ_0 (``index_add_``), and autograd carries dT
  to W_0 and b_0 through the small table products. Saving rather than recomputing: the gradient
  rows are a small subset (4096 of 30k-1.2M), so the saved activations are small, and a recompute
  would still have to materialise every layer's activation for the reverse sweep (registers hold
  one layer at a time), i.e. it would only add a forward pass.

Precision: operands in the compute dtype (fp32, fp16, bf16), fp32 accumulation, bias/ReLU in fp32.
fp32 products use ``dot_precision`` "ieee" (exact fp32 FMA) or "tf32" (tensor cores, 10-bit
mantissa inputs); ``nernfast.ops.predict`` picks tf32 exactly when PyTorch's own fp32 matmuls may use
it (``torch.get_float32_matmul_precision() != "highest"``). Under ``TRITON_INTERPRET=1`` bf16
arithmetic is unavailable: the wrapper runs bf16 inputs through the fp32 path and rounds the result.

Offsets are 64-bit (``program_id`` cast before multiplying), so any row count works.
Chain: ``_fused_mlp_fwd_kernel`` / ``_table_relu_kernel`` -> ``fused_forward`` / ``layered_forward``
-> ``mlp_forward``; ``mlp_backward`` -> ``FusedMLPFunction`` -> ``fused_mlp`` (functional wrapper).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .encoding import ENC_BASIC, ENC_FFN, ENC_TABLE, encode_tile, table_tile
from .linear import INTERPRET, linear, triton_dtype

FUSED_MAX_HIDDEN = 512  # switch point: above this width the layered (per-layer GEMM) path is used
MAX_OUTPUTS = 64        # K*K <= 64 (K <= 8)


@triton.jit
def _fused_mlp_fwd_kernel(x_ptr, first_ptr, b0_ptr, wm_ptr, bm_ptr, wf_ptr, bf_ptr, freq_ptr,
                          out_ptr, act_ptr,
                          N, H, F, KK, NMID, L,
                          MODE: tl.constexpr, SAVE: tl.constexpr, ODD: tl.constexpr,
                          DT: tl.constexpr, DOT_PREC: tl.constexpr, H_PAD: tl.constexpr,
                          KK_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_F: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rmask = rows < N
    cols = tl.arange(0, H_PAD)
    cmask = cols < H
    HH = H * H
    # ---- layer 0: encoding (in registers) x W_0^T, or the table gather ----
    if MODE == 2:
        acc = table_tile(x_ptr, rows, rmask, cols, cmask, first_ptr, H)
    else:
        acc = tl.zeros((BLOCK_M, H_PAD), dtype=tl.float32)
        for f0 in range(0, F, BLOCK_F):
            feats = f0 + tl.arange(0, BLOCK_F)
            fmask = feats < F
            e = encode_tile(x_ptr, rows, rmask, feats, fmask, freq_ptr, L, MODE)
            w = tl.load(first_ptr + cols[None, :] * F + feats[:, None],
                        mask=fmask[:, None] & cmask[None, :], other=0.0)
            acc = tl.dot(e.to(DT), w.to(DT), acc, input_precision=DOT_PREC)
        acc += tl.load(b0_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    h = tl.maximum(acc, 0.0).to(DT)
    if SAVE:
        tl.store(act_ptr + rows[:, None] * H + cols[None, :], h, mask=rmask[:, None] & cmask[None, :])
    # ---- hidden layers in expand/contract pairs ----
    for p in range(NMID // 2):
        la = 2 * p
        acc = tl.zeros((BLOCK_M, H_PAD), dtype=tl.float32)
        for n0 in range(0, H, BLOCK_N):
            ncols = n0 + tl.arange(0, BLOCK_N)
            nmask = ncols < H
            wa = tl.load(wm_ptr + la * HH + ncols[None, :] * H + cols[:, None],
                         mask=cmask[:, None] & nmask[None, :], other=0.0)
            c = tl.dot(h, wa, input_precision=DOT_PREC)
            c += tl.load(bm_ptr + la * H + ncols, mask=nmask, other=0.0).to(tl.float32)[None, :]
            c = tl.maximum(c, 0.0).to(DT)
            if SAVE:
                tl.store(act_ptr + ((la + 1).to(tl.int64) * N + rows)[:, None] * H + ncols[None, :], c,
                         mask=rmask[:, None] & nmask[None, :])
            wb = tl.load(wm_ptr + (la + 1) * HH + cols[None, :] * H + ncols[:, None],
                         mask=nmask[:, None] & cmask[None, :], other=0.0)
            acc = tl.dot(c, wb, acc, input_precision=DOT_PREC)
        acc += tl.load(bm_ptr + (la + 1) * H + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        h = tl.maximum(acc, 0.0).to(DT)
        if SAVE:
            tl.store(act_ptr + ((la + 2).to(tl.int64) * N + rows)[:, None] * H + cols[None, :], h,
                     mask=rmask[:, None] & cmask[None, :])
    # ---- last hidden layer (if NMID is odd) expands straight into the final layer ----
    kk = tl.arange(0, KK_PAD)
    kmask = kk < KK
    if ODD:
        la = NMID - 1
        o = tl.zeros((BLOCK_M, KK_PAD), dtype=tl.float32)
        for n0 in range(0, H, BLOCK_N):
            ncols = n0 + tl.arange(0, BLOCK_N)
            nmask = ncols < H
            wa = tl.load(wm_ptr + la * HH + ncols[None, :] * H + cols[:, None],
                         mask=cmask[:, None] & nmask[None, :], other=0.0)
            c = tl.dot(h, wa, input_precision=DOT_PREC)
            c += tl.load(bm_ptr + la * H + ncols, mask=nmask, other=0.0).to(tl.float32)[None, :]
            c = tl.maximum(c, 0.0).to(DT)
            if SAVE:
                tl.store(act_ptr + ((la + 1).to(tl.int64) * N + rows)[:, None] * H + ncols[None, :], c,
                         mask=rmask[:, None] & nmask[None, :])
            wf = tl.load(wf_ptr + kk[None, :] * H + ncols[:, None], mask=nmask[:, None] & kmask[None, :], other=0.0)
            o = tl.dot(c, wf, o, input_precision=DOT_PREC)
    else:
        wf = tl.load(wf_ptr + kk[None, :] * H + cols[:, None], mask=cmask[:, None] & kmask[None, :], other=0.0)
        o = tl.dot(h, wf, input_precision=DOT_PREC)
    o += tl.load(bf_ptr + kk, mask=kmask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * KK + kk[None, :], o.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & kmask[None, :])


@triton.jit
def _table_relu_kernel(idx_ptr, tab_ptr, out_ptr, N, H,
                       BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    """Layered path, first layer from tables: out = relu(T[i0] + T[i1] + T[i2]) in out's dtype."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H).to(tl.int64)
    rmask = rows < N
    cmask = cols < H
    h = tl.maximum(table_tile(idx_ptr, rows, rmask, cols, cmask, tab_ptr, H), 0.0)
    tl.store(out_ptr + rows[:, None] * H + cols[None, :], h.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


# ---- configuration ------------------------------------------------------------------------------
_INTERPRET_FUSED = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_F=32)


def _fused_configs(h_pad: int) -> list:
    """Small search space; BLOCK_M * H_PAD <= 16384 keeps h (compute dtype) and acc (fp32) in registers."""
    c = triton.Config
    if h_pad <= 128:
        cand = [(128, 32, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 3)]
    elif h_pad <= 256:
        cand = [(64, 32, 4, 2), (64, 64, 8, 2), (32, 64, 4, 2)]
    else:
        cand = [(32, 32, 4, 2), (32, 64, 8, 2), (16, 64, 4, 2)]
    return [c(dict(BLOCK_M=m, BLOCK_N=min(n, h_pad), BLOCK_F=32), num_warps=w, num_stages=s) for m, n, w, s in cand]


@functools.lru_cache(maxsize=None)
def _fused_tuned(h_pad: int):
    # Re-running a config writes the same outputs (no atomics, no accumulation into inputs).
    return triton.autotune(_fused_configs(h_pad), key=["H", "F", "KK", "NMID", "MODE", "SAVE", "DT"])(
        _fused_mlp_fwd_kernel)


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


@dataclass(frozen=True)
class MLPSpec:
    """Static description of one call (everything but the tensors)."""
    mode: int             # ENC_BASIC, ENC_FFN or ENC_TABLE
    levels: int           # L (basic) or F (ffn features); unused for tables
    in_features: int      # encoding width (first-layer fan-in); unused for tables
    hidden: int
    outputs: int          # K*K
    nmid: int             # hidden-to-hidden layers (num_blocks - 2)
    dtype: torch.dtype    # compute dtype of the operands
    dot_precision: str    # fp32 products: "ieee" or "tf32"
    path: str             # "fused" or "layered"

    @property
    def dt(self):
        return triton_dtype(self.dtype)


def choose_path(hidden: int, path: str = "auto") -> str:
    if path == "auto":
        return "fused" if hidden <= FUSED_MAX_HIDDEN else "layered"
    if path not in ("fused", "layered"):
        raise ValueError(f"unknown path {path!r}; choose 'auto', 'fused' or 'layered'")
    if path == "fused" and hidden > FUSED_MAX_HIDDEN:
        raise ValueError(f"the fused path holds a row block's activations in registers: hidden <= {FUSED_MAX_HIDDEN}")
    return path


# ---- forward launchers ----------------------------------------------------------------------------
def fused_forward(x, first, b0, wm, bm, wf, bf, freq, spec: MLPSpec, out: torch.Tensor,
                  acts: torch.Tensor | None) -> None:
    n = x.shape[0]
    args = (x, first, b0 if b0 is not None else first, wm, bm, wf, bf, freq, out,
            acts if acts is not None else out, n, spec.hidden, spec.in_features, spec.outputs, spec.nmid, spec.levels)
    h_pad = _pow2(spec.hidden)
    flags = dict(MODE=spec.mode, SAVE=acts is not None, ODD=spec.nmid % 2 == 1, DT=spec.dt,
                 DOT_PREC=spec.dot_precision, H_PAD=h_pad, KK_PAD=_pow2(spec.outputs))
    if INTERPRET:
        cfg = dict(_INTERPRET_FUSED, BLOCK_N=min(_INTERPRET_FUSED["BLOCK_N"], h_pad))
        _fused_mlp_fwd_kernel[(triton.cdiv(n, cfg["BLOCK_M"]),)](*args, **flags, **cfg)
    else:
        _fused_tuned(h_pad)[lambda meta: (triton.cdiv(n, meta["BLOCK_M"]),)](*args, **flags)


def _table_relu(idx, tab, out):
    n, h = out.shape
    bm, bh = (16, 32) if INTERPRET else (64, 128)
    _table_relu_kernel[(triton.cdiv(n, bm), triton.cdiv(h, bh))](idx, tab, out, n, h, BLOCK_M=bm, BLOCK_H=bh)


def layered_forward(x, first, b0, wm, bm, wf, bf, freq, spec: MLPSpec, out: torch.Tensor,
                    acts: torch.Tensor | None, chunk: int = 65536) -> None:
    """One GEMM per layer; acts (NMID+1, n, H) are written when given, else row chunks ping-pong."""
    n, H = x.shape[0], spec.hidden
    if acts is None and n > chunk:
        for s in range(0, n, chunk):
            layered_forward(x[s:s + chunk], first, b0, wm, bm, wf, bf, freq, spec, out[s:s + chunk], None, chunk)
        return
    if acts is None:
        bufs = torch.empty(min(2, spec.nmid + 1), n, H, device=x.device, dtype=spec.dtype)
        buf = lambda l: bufs[l % bufs.shape[0]]  # noqa: E731
    else:
        buf = lambda l: acts[l]  # noqa: E731
    common = dict(compute_dtype=spec.dtype, dot_precision=spec.dot_precision, out_dtype=spec.dtype)
    if spec.mode == ENC_TABLE:
        _table_relu(x, first, buf(0))
    else:
        linear(None, first.t(), n, H, spec.in_features, out=buf(0), bias=b0, relu=True,
               enc=(x, freq, spec.levels, spec.mode), enc_operand="a", **common)
    for l in range(spec.nmid):
        linear(buf(l), wm[l].t(), n, H, H, out=buf(l + 1), bias=bm[l], relu=True, **common)
    linear(buf(spec.nmid), wf.t(), n, spec.outputs, H, out=out, bias=bf, **common)


def mlp_forward(x, first, b0, wm, bm, wf, bf, freq, spec: MLPSpec, save: bool,
                out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    n = x.shape[0]
    if out is None:
        out = torch.empty(n, spec.outputs, device=x.device, dtype=spec.dtype)
    acts = torch.empty(spec.nmid + 1, n, spec.hidden, device=x.device, dtype=spec.dtype) if save else None
    if n == 0:
        return out, acts
    (fused_forward if spec.path == "fused" else layered_forward)(x, first, b0, wm, bm, wf, bf, freq, spec, out, acts)
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


def mlp_backward(g, x, first, wm, wf, freq, acts, spec: MLPSpec):
    """Gradients (d_first, d_b0, d_wm, d_bm, d_wf, d_bf) for upstream g (n, KK); fp32 tensors."""
    n, H = x.shape[0], spec.hidden
    g = g.to(spec.dtype).contiguous()
    common = dict(compute_dtype=spec.dtype, dot_precision=spec.dot_precision, out_dtype=spec.dtype)
    d_wf = _weight_grad(g, acts[spec.nmid], H, spec)
    d_bf = g.float().sum(0)
    dz = linear(g, wf, n, H, spec.outputs, mask=acts[spec.nmid], **common)
    d_wm = torch.empty(spec.nmid, H, H, device=g.device, dtype=torch.float32)
    d_bm = torch.empty(spec.nmid, H, device=g.device, dtype=torch.float32)
    for l in reversed(range(spec.nmid)):
        d_wm[l] = _weight_grad(dz, acts[l], H, spec)
        d_bm[l] = dz.float().sum(0)
        dz = linear(dz, wm[l], n, H, H, mask=acts[l], **common)
    if spec.mode == ENC_TABLE:
        d_first = torch.zeros_like(first, dtype=torch.float32)
        dzf = dz.float()
        for c in range(3):
            d_first.index_add_(0, x[:, c].long(), dzf)
        return d_first, None, d_wm, d_bm, d_wf, d_bf
    d_w0 = _weight_grad(dz, None, spec.in_features, spec, enc=(x, freq, spec.levels, spec.mode))
    return d_w0, dz.float().sum(0), d_wm, d_bm, d_wf, d_bf


class FusedMLPFunction(torch.autograd.Function):
    """rows = MLP(encoding(x)); differentiable w.r.t. the weights/biases (and the table), not x."""

    @staticmethod
    def forward(ctx, x, first, b0, wm, bm, wf, bf, freq, spec, save, out):
        rows, acts = mlp_forward(x, first, b0, wm, bm, wf, bf, freq, spec, save, out)
        if save:
            ctx.save_for_backward(x, first, wm, wf, freq, acts)
            ctx.spec = spec
        return rows

    @staticmethod
    def backward(ctx, g):
        x, first, wm, wf, freq, acts = ctx.saved_tensors
        d_first, d_b0, d_wm, d_bm, d_wf, d_bf = mlp_backward(g, x, first, wm, wf, freq, acts, ctx.spec)
        dt = ctx.spec.dtype
        cast = lambda t: None if t is None else t.to(dt)  # noqa: E731
        return (None, d_first if ctx.spec.mode == ENC_TABLE else cast(d_first), cast(d_b0), cast(d_wm),
                cast(d_bm), cast(d_wf), cast(d_bf), None, None, None, None)


def fused_mlp(x: torch.Tensor, first: torch.Tensor, b0: torch.Tensor | None, wm: torch.Tensor, bm: torch.Tensor,
              wf: torch.Tensor, bf: torch.Tensor, freq: torch.Tensor, *, mode: int, levels: int = 1,
              dot_precision: str = "ieee", path: str = "auto", out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows (n, K*K) of the predictor for n coordinate rows.

    x: coords (n, 3) fp32 (``ENC_BASIC``/``ENC_FFN``) or table indices (n, 3) int32 (``ENC_TABLE``).
    first: W_0 (H, in) in the compute dtype, or the table (U, H) fp32 (bias folded in; b0 = None).
    wm (NMID, H, H), bm (NMID, H), wf (KK, H), bf (KK,): compute dtype (= the dtype of wf).
    freq: ``BasicEncoding.freqs`` (L,) or ``FFNEncoding.B`` (F, 3), fp32 (unused for tables).
    out: optional (n, KK) destination (e.g. a view of the flat conv-weight buffer); no-grad calls only.
    Under the interpreter, bf16 runs through the fp32 path (see module doc).
    """
    dtype = wf.dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"unsupported predictor dtype {dtype}; use float32, float16 or bfloat16")
    if INTERPRET and dtype == torch.bfloat16:
        up = lambda t: None if t is None or t.dtype != torch.bfloat16 else t.float()  # noqa: E731
        r = fused_mlp(x, up(first) if mode != ENC_TABLE else first, up(b0), up(wm), up(bm), up(wf), up(bf), freq,
                      mode=mode, levels=levels, dot_precision=dot_precision, path=path)
        return r.to(dtype) if out is None else out.copy_(r)
    H, KK = wf.shape[1], wf.shape[0]
    if KK > MAX_OUTPUTS:
        raise ValueError(f"K*K = {KK} outputs per row; the kernels support K*K <= {MAX_OUTPUTS} (K <= 8)")
    nmid = wm.shape[0]
    if nmid == 0:  # keep valid pointers for the (unused) middle-layer arguments
        wm, bm = wf.new_zeros(0, H, H), wf.new_zeros(0, H)
    in_features = 0 if mode == ENC_TABLE else first.shape[1]
    spec = MLPSpec(mode, levels, in_features, H, KK, nmid, dtype, dot_precision, choose_path(H, path))
    tensors = (first, b0, wm, bm, wf, bf)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if save and out is not None:
        raise ValueError("out= is for no-grad calls (materialisation); with autograd let the op allocate")
    x = x.contiguous()
    args = [t.contiguous() if t is not None else None for t in tensors]
    return FusedMLPFunction.apply(x, *args, freq.contiguous(), spec, save, out)


__all__ = ["ENC_BASIC", "ENC_FFN", "ENC_TABLE", "FUSED_MAX_HIDDEN", "FusedMLPFunction", "MLPSpec", "fused_mlp",
           "mlp_backward", "mlp_forward"]

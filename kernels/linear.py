"""Tiled GEMM with fused epilogues: the per-layer MLP path and the MLP backward.

    C[m, n] = epilogue( sum_k A[m, k] * B[k, n] )

A and B are strided views (so transposes cost nothing) or the positional encoding computed in
registers from the coordinates (``A_ENC``: A[m, k] = enc(row m, feature k), used by the first layer's
forward; ``B_ENC``: B[k, n] = enc(row k, feature n), used by the first layer's weight gradient).
Epilogue, in fp32: ``+ bias[n]`` (``HAS_BIAS``), ``relu`` (``RELU``), ``* (mask[m, n] > 0)``
(``HAS_MASK``: the ReLU derivative from the saved post-ReLU activation), then cast to C's dtype.
Operands are cast to ``DT`` for ``tl.dot`` with fp32 accumulation (fp32 operands: ``DOT_PREC``
"tf32" or "ieee").

Split-K (``SPLIT_K > 1``, for weight gradients whose reduction runs over thousands of rows while the
output is only H x H): program (m, n, s) writes its partial sum to ``C + s * split_stride``; the
launcher reduces the partials with one ``sum`` (deterministic, no atomics).

Chain: ``_linear_kernel`` -> ``linear()`` (launcher; autotuned on GPU, a fixed config under the
interpreter). Used by ``fused_mlp.py``.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .encoding import encode_tile

@triton.jit
def _linear_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, mask_ptr, coords_ptr, freq_ptr,
                   M, N, K, L, ENC_F, K_PER_SPLIT,
                   sam, sak, sbk, sbn, scm, scn, smm, smn, split_stride,
                   A_ENC: tl.constexpr, B_ENC: tl.constexpr, ENC_MODE: tl.constexpr,
                   HAS_BIAS: tl.constexpr, RELU: tl.constexpr, HAS_MASK: tl.constexpr,
                   DT: tl.constexpr, DOT_PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    pid_k = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    mmask = offs_m < M
    nmask = offs_n < N
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        kmask = ks < k_hi
        if A_ENC:
            a = encode_tile(coords_ptr, offs_m, mmask, ks, kmask & (ks < ENC_F), freq_ptr, L, ENC_MODE)
        else:
            a = tl.load(a_ptr + offs_m[:, None] * sam + ks[None, :] * sak,
                        mask=mmask[:, None] & kmask[None, :], other=0.0)
        if B_ENC:
            b = encode_tile(coords_ptr, ks, kmask, offs_n, nmask & (offs_n < ENC_F), freq_ptr, L, ENC_MODE)
        else:
            b = tl.load(b_ptr + ks[:, None] * sbk + offs_n[None, :] * sbn,
                        mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc = tl.dot(a.to(DT), b.to(DT), acc, input_precision=DOT_PREC)
    m2 = mmask[:, None] & nmask[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if HAS_MASK:
        g = tl.load(mask_ptr + offs_m[:, None] * smm + offs_n[None, :] * smn, mask=m2, other=0.0)
        acc = tl.where(g > 0, acc, 0.0)
    tl.store(c_ptr + pid_k * split_stride + offs_m[:, None] * scm + offs_n[None, :] * scn,
             acc.to(c_ptr.dtype.element_ty), mask=m2)


# Kernels defined while TRITON_INTERPRET=1 run in the interpreter: no autotuning there.
INTERPRET = type(_linear_kernel).__name__ == "InterpretedFunction"
# NERNFAST_AUTOTUNE=0: compiled kernels take the first config of each space (read at call time, so a
# script may set ``nernfast.kernels.linear.AUTOTUNE`` too).
AUTOTUNE = os.environ.get("NERNFAST_AUTOTUNE", "1") != "0"

# Fixed configuration under the interpreter (tiny shapes; no autotuning there).
_INTERPRET_CONFIG = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32)


def _configs():
    c = triton.Config
    return [c(dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32), num_warps=8, num_stages=3),
            c(dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32), num_warps=4, num_stages=4),
            c(dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64), num_warps=4, num_stages=3),
            c(dict(BLOCK_M=128, BLOCK_N=16, BLOCK_K=64), num_warps=4, num_stages=3)]  # narrow outputs (K*K)


@functools.lru_cache(maxsize=None)
def _tuned():
    # Tensor-valued epilogue inputs are not rewritten by the kernel, and every program writes its own
    # slot (no atomics), so re-running configs while tuning is harmless.
    return triton.autotune(_configs(), key=["M", "N", "K", "A_ENC", "B_ENC", "HAS_MASK", "DT"])(_linear_kernel)


def triton_dtype(dtype: torch.dtype):
    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


def _strides(t: torch.Tensor | None) -> tuple[int, int]:
    return (0, 0) if t is None else (t.stride(0), t.stride(1))


def linear(a: torch.Tensor | None, b: torch.Tensor | None, M: int, N: int, K: int, *,
           out: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
           bias: torch.Tensor | None = None, relu: bool = False, mask: torch.Tensor | None = None,
           enc: tuple[torch.Tensor, torch.Tensor, int, int, int] | None = None, enc_operand: str | None = None,
           compute_dtype: torch.dtype = torch.float32, dot_precision: str = "ieee",
           split_k: int = 1) -> torch.Tensor:
    """``out (M, N) = epilogue(A @ B)``; A (M, K) and B (K, N) strided 2-D tensors (any strides).

    ``enc=(coords, freq, L, mode, F)`` with ``enc_operand='a'`` or ``'b'`` replaces that operand by the
    positional encoding (see module doc), zero for features >= F (padded weights). ``split_k > 1`` needs no bias/relu/mask (weight gradients).
    """
    ref = a if a is not None else b
    dev = ref.device
    if out is None:
        out = torch.empty(M, N, device=dev, dtype=out_dtype)
    if split_k > 1 and (bias is not None or relu or mask is not None):
        raise ValueError("split_k > 1 is for plain products (the partials are summed afterwards)")
    coords, freq, L, mode, n_feat = enc if enc is not None else (ref, ref, 1, 0, 0)
    a_enc, b_enc = enc_operand == "a", enc_operand == "b"
    dummy = ref
    target = out
    if split_k > 1:
        per = triton.cdiv(triton.cdiv(K, split_k), 64) * 64
        split_k = triton.cdiv(K, per)
        target = torch.empty(split_k, M, N, device=dev, dtype=torch.float32)
    else:
        per = max(K, 1)
    scm, scn = (target.stride(-2), target.stride(-1))
    split_stride = target.stride(0) if split_k > 1 else 0
    args = (a if a is not None else dummy, b if b is not None else dummy, target,
            bias if bias is not None else dummy, mask if mask is not None else dummy, coords, freq,
            M, N, K, L, n_feat, per, *_strides(a), *_strides(b), scm, scn, *_strides(mask), split_stride)
    flags = dict(A_ENC=a_enc, B_ENC=b_enc, ENC_MODE=mode, HAS_BIAS=bias is not None, RELU=relu,
                 HAS_MASK=mask is not None, DT=triton_dtype(compute_dtype), DOT_PREC=dot_precision)
    if INTERPRET or not AUTOTUNE:
        if INTERPRET:
            cfg = _INTERPRET_CONFIG
        else:
            c0 = _configs()[0]
            cfg = dict(c0.kwargs, num_warps=c0.num_warps, num_stages=c0.num_stages)
        grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]), split_k)
        _linear_kernel[grid](*args, **flags, **cfg)
    else:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]), split_k)  # noqa: E731
        _tuned()[grid](*args, **flags)
    if split_k > 1:
        out.copy_(target.sum(0))
    return out

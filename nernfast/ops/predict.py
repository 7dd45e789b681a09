"""Coordinates -> positional encoding -> predictor MLP -> KxK rows.

``predict_rows_reference`` is the plain composition of the modules (the ground truth for every fast
path). ``predict_rows`` is the dispatching entry point used everywhere else:

* ``NERNFAST_REFERENCE=1`` -> the reference.
* CUDA tensors -> the Triton kernels of ``nernfast.kernels.fused_mlp`` (fused single-pass MLP for
  H <= 512, per-layer GEMMs above; first layer from tables for the basic encoding).
* everything else (CPU, an encoding without a kernel form) -> the PyTorch path: for encodings with
  per-coordinate blocks (the basic one) the first layer may come from per-coordinate tables
  (``nernfast.ops.tables``) through one ``embedding_bag``, which removes the 6L-wide matmul and all
  sin/cos work per row; where this does not pay (see ``TABLE_ON_CPU``), the plain composition.

What the paths need from the encoding is the ``nernfast.encoding.PositionalEncoding`` interface
(``coordinate_blocks``, ``encode_coordinate``, ``kernel_encoding``); any other module takes the
reference.

Compute dtype: the autocast dtype when autocast is on for the device, else the predictor's weight
dtype; the encoding itself is always computed in fp32 and cast to the compute dtype. Outputs come
in the compute dtype, as from the reference.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..encoding import PositionalEncoding
from ..predictor import Predictor
from . import force_reference
from .tables import coordinate_index, first_layer_table, has_coordinate_blocks

# Whether the CPU path uses the first-layer tables, per compute dtype. Measured on the 2-core CI
# machine, ResNet-56 / H320 whole-network forward (`benchmarks/gpu_check.py OUT --cpu-tables 7`,
# benchmarks/RESULTS.md): 1.25x faster than the reference in fp32, 1.28x in bf16; fp16 not measured
# (same mechanism: no sin/cos, no 6L-wide product per row).
TABLE_ON_CPU = {torch.float32: True, torch.bfloat16: True, torch.float16: True}
# On CUDA the tables replace the first GEMM and all sin/cos of the fused kernel (GPU-unverified).
TABLE_ON_CUDA = True

# Rows per step of a no-grad CPU prediction when the caller names no chunk: the hidden activations of
# 4096 rows (4096 x H x 4 bytes, 2.3 MiB at H140) stay in L2/L3 between the layers' GEMMs, where the whole
# network's (30k-300k rows) go to memory. Measured (ResNet-56 / H320, benchmarks/RESULTS.md, issue 12):
# `materialize_(model)` 0.70x -> 1.37x the reference in fp32, 1.19x -> 4.58x with dtype=torch.bfloat16.
# Chunking a no-grad forward changes no value (each row is its own GEMM row); gradient calls keep
# one call so their weight-gradient sums keep their order.
CPU_CHUNK = 4096

FIRST_LAYER_MODES = ("auto", "table", "direct")
BACKENDS = ("auto", "torch", "triton")


def compute_dtype(predictor: nn.Module, device_type: str) -> torch.dtype:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return predictor.final_linear_layer.weight.dtype


def predict_rows_reference(predictor: Predictor, encoding: nn.Module, coords: torch.Tensor,
                           chunk: int | None = None) -> torch.Tensor:
    """``predictor(encoding(coords))``; the encoding is cast to the predictor's dtype (outside autocast)."""
    def run(c: torch.Tensor) -> torch.Tensor:
        x = encoding(c)
        w = next(predictor.parameters(), x)
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(w.dtype)
        return predictor(x)
    if chunk is None or coords.shape[0] <= chunk:
        return run(coords)
    return torch.cat([run(c) for c in coords.split(chunk)])


def _supported(predictor: nn.Module, encoding: nn.Module) -> bool:
    """The fast paths need a ``Predictor`` with biases and an encoding with the ``PositionalEncoding``
    interface; anything else takes the reference."""
    return isinstance(predictor, Predictor) and isinstance(encoding, PositionalEncoding) and \
        all(lin.bias is not None for lin in predictor.linears())


def _use_table(first_layer: str, encoding: nn.Module, device_type: str, dtype: torch.dtype) -> bool:
    if first_layer not in FIRST_LAYER_MODES:
        raise ValueError(f"unknown first_layer {first_layer!r}; choose one of {FIRST_LAYER_MODES}")
    blocks = has_coordinate_blocks(encoding)
    if first_layer == "table" and not blocks:
        raise ValueError(f"the table shortcut needs an encoding with per-coordinate blocks (the basic encoding), "
                         f"got {type(encoding).__name__}")
    if first_layer != "auto":
        return first_layer == "table"
    if not blocks:
        return False
    return TABLE_ON_CUDA if device_type == "cuda" else TABLE_ON_CPU.get(dtype, False)


def _predict_torch(predictor: Predictor, encoding: PositionalEncoding, coords: torch.Tensor, chunk: int | None,
                   use_table: bool) -> torch.Tensor:
    if not use_table:
        return predict_rows_reference(predictor, encoding, coords, chunk)
    dev = coords.device.type
    dtype = compute_dtype(predictor, dev)
    autocast = torch.is_autocast_enabled(dev)
    index = coordinate_index(coords)
    first = predictor.layers[0]
    with torch.autocast(dev, enabled=False):
        tab = first_layer_table(encoding, first.weight, first.bias, index, dtype)

    def run(idx: torch.Tensor) -> torch.Tensor:
        h = F.embedding_bag(idx, tab, mode="sum")  # fp32: T[i0] + T[i1] + T[i2]
        return predictor.hidden_from_first(h if autocast else h.to(dtype))
    if chunk is None or coords.shape[0] <= chunk:
        return run(index.idx)
    return torch.cat([run(i) for i in index.idx.split(chunk)])


@torch.compiler.assume_constant_result  # read at trace time (dynamo cannot trace it)
def _fp32_matmul_precision() -> str:
    return torch.get_float32_matmul_precision()


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 kernels use tf32 tensor cores exactly when PyTorch's own fp32 matmuls may.
    if dtype == torch.float32 and _fp32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


_PACKS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _packed(fm, predictor: Predictor, spec, weights: list) -> object:
    """The padded compute copies of the predictor's weights, rebuilt only when a parameter changes
    (in-place updates bump ``_version``) or the dtype/width/path differ. Under torch.compile they are
    built in the graph (the cache key reads data pointers, which cannot be traced)."""
    if torch.compiler.is_compiling():
        first, b0, mids, wf, bf = weights
        return fm.pack_weights(spec, first, b0, mids, wf, bf)
    key = (spec, tuple((p.data_ptr(), p._version) for p in predictor.parameters()))
    hit = _PACKS.get(predictor)
    if hit is not None and hit[0] == key:
        return hit[1]
    first, b0, mids, wf, bf = weights
    pk = fm.pack_weights(spec, first, b0, mids, wf, bf)
    _PACKS[predictor] = (key, pk)
    return pk


def _predict_triton(predictor: Predictor, encoding: PositionalEncoding, coords: torch.Tensor, use_table: bool,
                    out: torch.Tensor | None, path: str) -> torch.Tensor:
    fm = _kernels()
    dev = coords.device.type
    dtype = compute_dtype(predictor, dev)
    lins = predictor.linears()
    with torch.autocast(dev, enabled=False):
        cast = lambda t: t.to(dtype)  # noqa: E731  (differentiable; a no-op without autocast)
        mids = [(cast(l.weight), cast(l.bias)) for l in lins[1:-1]]
        wf, bf = cast(lins[-1].weight), cast(lins[-1].bias)
        if use_table:
            index = coordinate_index(coords)
            x, b0, mode, levels = index.idx32, None, fm.ENC_TABLE, 1
            first = first_layer_table(encoding, lins[0].weight, lins[0].bias, index, dtype)
            freq = first  # unused
        else:
            x, first, b0 = coords.float(), cast(lins[0].weight), cast(lins[0].bias)
            ke = encoding.kernel_encoding()
            mode, levels, freq = fm.ENC_MODES[ke.kind], ke.size, ke.params
        packed = None
        if not (fm.INTERPRET and dtype == torch.bfloat16):  # (the interpreter's bf16 detour repacks in fp32)
            spec = fm.make_spec(mode, levels, first, wf, len(mids), _dot_precision(dtype), path)
            packed = _packed(fm, predictor, spec, [first, b0, mids, wf, bf])
        return fm.fused_mlp(x, first, b0, mids, wf, bf, freq, mode=mode, levels=levels,
                            dot_precision=_dot_precision(dtype), path=path, out=out, packed=packed)


def _kernels():
    """nernfast.kernels.fused_mlp, imported lazily (importing nernfast never needs triton)."""
    try:
        from ..kernels import fused_mlp
    except ModuleNotFoundError as e:
        if e.name not in ("nernfast.kernels", "nernfast.kernels.fused_mlp"):
            raise
        raise ImportError("nernfast.kernels (the Triton kernels: the repository's top-level kernels/ folder) is "
                          "missing: install the package (pip install -e .) or run from a checkout with kernels/ "
                          "beside nernfast/") from None
    return fused_mlp


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(device_type: str, backend: str = "auto") -> str:
    if backend != "auto":
        return backend
    return "triton" if device_type == "cuda" and triton_available() else "torch"


def predict_rows(predictor: Predictor, encoding: nn.Module, coords: torch.Tensor, chunk: int | None = None, *,
                 out: torch.Tensor | None = None, first_layer: str = "auto", backend: str = "auto",
                 path: str = "auto") -> torch.Tensor:
    """Rows (n, K*K) predicted for coordinates (n, 3), differentiable in the predictor's parameters.

    chunk: rows per step of the PyTorch paths (bounds memory; the fused kernel needs none). None: one
        step, except no-grad calls on the CPU, which take ``CPU_CHUNK`` rows per step (cache-resident).
    out: optional (n, K*K) destination, e.g. ``flat.view(N, K*K)`` of a uniform plan's flat buffer
        (no-grad calls); the result is written there and returned.
    first_layer: "auto" (tables for the basic encoding where they pay), "table" or "direct".
    backend: "auto" (CUDA -> "triton", else "torch"), or force one ("triton" on CPU tensors needs
        TRITON_INTERPRET=1, for tests).
    path: Triton only: "auto" (fused for hidden <= 512, else layered), "fused" or "layered".
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if force_reference() or not _supported(predictor, encoding):
        rows = predict_rows_reference(predictor, encoding, coords, chunk)
        return rows if out is None else out.copy_(rows)
    dev = coords.device.type
    if chunk is None and dev == "cpu" and not torch.is_grad_enabled():
        chunk = CPU_CHUNK
    backend = choose_backend(dev, backend)
    use_table = _use_table(first_layer, encoding, dev, compute_dtype(predictor, dev))
    if backend == "triton" and (use_table or encoding.kernel_encoding() is not None):
        return _predict_triton(predictor, encoding, coords, use_table, out, path)
    rows = _predict_torch(predictor, encoding, coords, chunk, use_table)
    return rows if out is None else out.copy_(rows)

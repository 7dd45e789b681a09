"""Triton kernels, shipped as ``nernfast.kernels`` (the folder is mapped in setup.py).

- ``encoding``: the positional encodings (basic, ffn) and the first-layer table gather as ``@jit``
  helpers, computed in registers.
- ``fused_mlp``: the whole predictor (encoding -> every layer -> K*K outputs) as one kernel for hidden
  widths <= 512, a per-layer GEMM path above, and the backward; the custom ops ``torch.ops.nernfast.fused_mlp`` (+ ``_backward``, ``_into``) and
  the functional wrapper ``fused_mlp``.
- ``linear``: the tiled GEMM with fused epilogues (bias, ReLU, ReLU mask, split-K) both use.

Import lazily (``nernfast.ops.predict`` does): importing nernfast never needs triton.
"""

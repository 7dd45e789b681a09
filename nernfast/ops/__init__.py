"""Hot-path ops, each with a plain-PyTorch reference beside its fast path.

- ``scatter``: predicted rows (N, K*K) <-> flat conv-weight buffer (centre crop, permutation).
- ``predict``: coordinates -> encoding -> MLP -> rows (table shortcut on the CPU, Triton on CUDA).
Set ``NERNFAST_REFERENCE=1`` to force every op onto its reference path (for debugging).
"""
from __future__ import annotations

import os


def force_reference() -> bool:
    return os.environ.get("NERNFAST_REFERENCE", "0") not in ("", "0")

"""Shared pytest setup."""
from __future__ import annotations

import os

import torch

# Triton kernels run on the CPU only under its interpreter, and Triton reads TRITON_INTERPRET when a kernel
# is defined (at import of nernfast.kernels.*): set it before any test module imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

"""Loads the C++/CUDA extension ``nernfast._C`` (``torch.ops.nernfast.*``) and registers the ops'
autograd formulas and fake kernels (so autograd and ``torch.compile`` see through them).

Without a built extension the package still works (every op has a plain-PyTorch reference); one
warning line says so. ``available()`` tells whether the ops exist, ``has_cuda()`` whether their CUDA
kernels were compiled. Build: ``NERNFAST_CUDA=0 pip install --no-build-isolation --no-deps -e .``.
"""
from __future__ import annotations

import math
import warnings

import torch

_C = None
_error: str | None = None
try:
    from . import _C  # noqa: F811  (importing runs the TORCH_LIBRARY registrations)
except (ImportError, OSError) as e:  # not built, or built against another torch
    _error = f"{type(e).__name__}: {e}".splitlines()[0]


class ExtensionMissingWarning(RuntimeWarning):
    """nernfast._C could not be loaded; the plain-PyTorch reference paths are used."""


def _warn_missing() -> None:
    # warn_explicit with a non-file "filename" prints exactly one line (no source line echoed).
    warnings.warn_explicit(
        f"nernfast: C++ extension not loaded ({_error}); using the PyTorch reference ops. "
        "Build it with `pip install --no-build-isolation --no-deps -e .`",
        ExtensionMissingWarning, filename="nernfast._ext", lineno=0, module="nernfast._ext")


def available() -> bool:
    """True when ``torch.ops.nernfast.*`` are registered (the extension is built and loaded)."""
    return _C is not None


def has_cuda() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return _C is not None and bool(getattr(_C, "with_cuda", 0))


def supports(t: torch.Tensor) -> bool:
    """Whether the extension has a kernel for this tensor's device and dtype."""
    if _C is None or t.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return False
    return t.device.type == "cpu" or (t.device.type == "cuda" and has_cuda())


def _register_fakes() -> None:
    """Shape-only kernels for FakeTensor/meta tracing (torch.compile, torch.export)."""

    @torch.library.register_fake("nernfast::scatter_rows")
    def _scatter_rows_fake(rows, row_offsets, buf_offsets, kernel_sizes, index, numel):
        torch._check(rows.dim() == 2, lambda: f"nernfast.scatter_rows: rows must be 2-D, got {rows.shape}")
        return rows.new_empty(numel)

    @torch.library.register_fake("nernfast::gather_rows")
    def _gather_rows_fake(flat, row_offsets, buf_offsets, kernel_sizes, index, num_rows, kernel_size):
        torch._check(flat.dim() == 1, lambda: f"nernfast.gather_rows: flat must be 1-D, got {flat.shape}")
        return flat.new_empty(num_rows, kernel_size * kernel_size)

    @torch.library.register_fake("nernfast::scatter_rows_into")
    def _scatter_rows_into_fake(rows, row_offsets, buf_offsets, kernel_sizes, index, flat):
        return None


def _register_autograd() -> None:
    """scatter_rows and gather_rows are each other's adjoint (exact for distinct index entries), so
    each one's backward is the other; both are differentiable again (double backward)."""

    def scatter_setup(ctx, inputs, output):
        rows, row_offsets, buf_offsets, kernel_sizes, index, numel = inputs
        ctx.save_for_backward(row_offsets, buf_offsets, kernel_sizes, index)
        ctx.num_rows, ctx.kernel_size = rows.shape[0], math.isqrt(rows.shape[1])

    def scatter_backward(ctx, grad):
        row_offsets, buf_offsets, kernel_sizes, index = ctx.saved_tensors
        g = torch.ops.nernfast.gather_rows(grad.contiguous(), row_offsets, buf_offsets, kernel_sizes, index,
                                           ctx.num_rows, ctx.kernel_size)
        return g, None, None, None, None, None

    def gather_setup(ctx, inputs, output):
        flat, row_offsets, buf_offsets, kernel_sizes, index, num_rows, kernel_size = inputs
        ctx.save_for_backward(row_offsets, buf_offsets, kernel_sizes, index)
        ctx.numel = flat.shape[0]

    def gather_backward(ctx, grad):
        row_offsets, buf_offsets, kernel_sizes, index = ctx.saved_tensors
        g = torch.ops.nernfast.scatter_rows(grad.contiguous(), row_offsets, buf_offsets, kernel_sizes, index,
                                            ctx.numel)
        return g, None, None, None, None, None, None

    torch.library.register_autograd("nernfast::scatter_rows", scatter_backward, setup_context=scatter_setup)
    torch.library.register_autograd("nernfast::gather_rows", gather_backward, setup_context=gather_setup)


if _C is None:
    _warn_missing()
else:
    _register_fakes()
    _register_autograd()

"""Rows of predicted KxK kernels <-> the flat buffer of all predicted conv weights.

``rows_to_flat`` writes row d (destination order, see nernfast.plan) into its layer's slot, taking
the centre k_l x k_l of the KxK prediction; ``flat_to_rows`` is its adjoint (gradients of the flat
buffer -> gradients of the rows, zero outside the crop); ``write_rows_`` is ``rows_to_flat`` in place
into an existing buffer (the bound conv weights of a model, see nernfast.binding). Each takes an
optional ``index``: the destination row of every given row, so rows in any order (chain order:
``index=chain_index(plan, device)``) or any subset can be written. Index entries must be distinct.

Fast path: the C++/CUDA ops ``torch.ops.nernfast.scatter_rows / gather_rows / scatter_rows_into``
(csrc/scatter.cpp, one call for the whole network, autograd and fake kernels registered) when the
extension is loaded, the tensor's device and dtype are supported and ``NERNFAST_REFERENCE`` is unset;
else the plain-PyTorch references below (per-layer loops). Uniform (all-KxK) plans without an index
need no op at all: the rows *are* the flat buffer (zero-copy view).
"""
from __future__ import annotations

import torch

from .. import _ext
from ..plan import Layout, WeightPlan
from . import force_reference


def layout_tensors(plan: WeightPlan, device: torch.device | str) -> Layout:
    """The plan's layout tensors on ``device`` (``WeightPlan.layout``: built once per plan and device)."""
    return plan.layout(device)


def chain_index(plan: WeightPlan, device: torch.device | str) -> torch.Tensor:
    """``index`` for rows given in chain order (the permutation's order): chain position -> destination row."""
    return layout_tensors(plan, device).perm


def _use_op(t: torch.Tensor) -> bool:
    return _ext.supports(t) and not force_reference()


# ---- references (plain PyTorch; the ground truth for the ops) -------------------------------------

def centre_crop(x: torch.Tensor, k_full: int, k: int) -> torch.Tensor:
    """(..., k_full*k_full) -> (..., k, k), the centre window."""
    lo = (k_full - k) // 2
    return x.unflatten(-1, (k_full, k_full))[..., lo:lo + k, lo:lo + k]


def _full_rows(rows: torch.Tensor, plan: WeightPlan, index: torch.Tensor | None) -> torch.Tensor:
    if index is None:
        return rows
    return rows.new_zeros(plan.num_rows, rows.shape[1]).index_copy(0, index.to(rows.device), rows)


def rows_to_flat_reference(rows: torch.Tensor, plan: WeightPlan, index: torch.Tensor | None = None) -> torch.Tensor:
    """Per-layer loop: slice, crop, flatten, concatenate. Differentiable."""
    rows, K = _full_rows(rows, plan, index), plan.kernel_size
    parts = [centre_crop(rows[plan.row_offsets[i]:plan.row_offsets[i + 1]], K, l.shape[2]).reshape(-1)
             for i, l in enumerate(plan.layers)]
    return torch.cat(parts)


def flat_to_rows_reference(flat: torch.Tensor, plan: WeightPlan, index: torch.Tensor | None = None) -> torch.Tensor:
    """Adjoint of ``rows_to_flat_reference``: (numel,) -> (N, K*K) (or (len(index), K*K)), zeros outside each crop."""
    K = plan.kernel_size
    out = flat.new_zeros(plan.num_rows, K * K)
    for i, l in enumerate(plan.layers):
        k = l.shape[2]
        seg = flat[plan.buf_offsets[i]:plan.buf_offsets[i + 1]].view(l.rows, k, k)
        centre_crop(out[plan.row_offsets[i]:plan.row_offsets[i + 1]], K, k).copy_(seg)
    return out if index is None else out[index.to(out.device)]


@torch.no_grad()
def write_layers_reference(rows: torch.Tensor, plan: WeightPlan, weights: list[torch.Tensor]) -> None:
    """The per-layer Python loop the ops replace: crop each layer's rows and copy them into its weight."""
    K = plan.kernel_size
    for i, (l, w) in enumerate(zip(plan.layers, weights)):
        w.copy_(centre_crop(rows[plan.row_offsets[i]:plan.row_offsets[i + 1]], K, l.shape[2]).reshape(l.shape))


# ---- dispatching entry points -----------------------------------------------------------------------

def _check_rows(rows: torch.Tensor, plan: WeightPlan, index: torch.Tensor | None) -> None:
    K = plan.kernel_size
    n = plan.num_rows if index is None else index.shape[0]
    if rows.dim() != 2 or rows.shape != (n, K * K):
        raise ValueError(f"rows must have shape ({n}, {K * K}) for this plan"
                         f"{'' if index is None else ' and index'}, got {tuple(rows.shape)}")


def rows_to_flat(rows: torch.Tensor, plan: WeightPlan, index: torch.Tensor | None = None) -> torch.Tensor:
    """Differentiable rows (N, K*K) -> flat buffer (numel,); a zero-copy view for uniform plans.
    With ``index`` (destination row of each given row), unnamed rows' elements are 0."""
    _check_rows(rows, plan, index)
    if index is None and plan.uniform:
        return rows.reshape(-1)
    if _use_op(rows):
        lay = layout_tensors(plan, rows.device)
        idx = None if index is None else index.to(rows.device, torch.long).contiguous()
        return torch.ops.nernfast.scatter_rows(rows.contiguous(), lay.row_offsets, lay.buf_offsets,
                                               lay.kernel_sizes, idx, plan.numel)
    return rows_to_flat_reference(rows, plan, index)


def flat_to_rows(flat: torch.Tensor, plan: WeightPlan, index: torch.Tensor | None = None) -> torch.Tensor:
    """Differentiable adjoint of ``rows_to_flat``: flat (numel,) -> rows (N or len(index), K*K), zeros
    outside each crop; a zero-copy view for uniform plans."""
    if flat.shape != (plan.numel,):
        raise ValueError(f"flat must have shape ({plan.numel},) for this plan, got {tuple(flat.shape)}")
    K = plan.kernel_size
    if index is None and plan.uniform:
        return flat.view(plan.num_rows, K * K)
    if _use_op(flat):
        lay = layout_tensors(plan, flat.device)
        idx = None if index is None else index.to(flat.device, torch.long).contiguous()
        n = plan.num_rows if idx is None else idx.shape[0]
        return torch.ops.nernfast.gather_rows(flat.contiguous(), lay.row_offsets, lay.buf_offsets,
                                              lay.kernel_sizes, idx, n, K)
    return flat_to_rows_reference(flat, plan, index)


@torch.no_grad()
def write_rows_(flat: torch.Tensor, rows: torch.Tensor, plan: WeightPlan,
                index: torch.Tensor | None = None) -> torch.Tensor:
    """Write rows into the existing flat buffer in place, one call for the whole network (no autograd).

    ``flat`` is typically a model's bound weight buffer (nernfast.binding); rows are converted to its
    dtype and device. Elements of rows not named by ``index`` keep their values. Returns ``flat``.
    """
    _check_rows(rows, plan, index)
    if flat.shape != (plan.numel,) or not flat.is_contiguous():
        raise ValueError(f"flat must be a contiguous ({plan.numel},) tensor for this plan, "
                         f"got shape {tuple(flat.shape)}{'' if flat.is_contiguous() else ' (non-contiguous)'}")
    rows = rows.to(device=flat.device, dtype=flat.dtype)
    if index is None and plan.uniform:
        flat.copy_(rows.reshape(-1))
    elif _use_op(flat):
        lay = layout_tensors(plan, flat.device)
        idx = None if index is None else index.to(flat.device, torch.long).contiguous()
        torch.ops.nernfast.scatter_rows_into(rows.contiguous(), lay.row_offsets, lay.buf_offsets,
                                             lay.kernel_sizes, idx, flat)
    elif index is None:
        write_layers_reference(rows, plan, flat_views(flat, plan))
    else:
        flat_rows = flat_to_rows_reference(flat, plan).index_copy_(0, index.to(flat.device), rows)
        write_layers_reference(flat_rows, plan, flat_views(flat, plan))
    return flat


def flat_views(flat: torch.Tensor, plan: WeightPlan) -> list[torch.Tensor]:
    """The per-layer conv weights as views into the flat buffer."""
    return [flat[plan.buf_offsets[i]:plan.buf_offsets[i + 1]].view(l.shape) for i, l in enumerate(plan.layers)]

"""Rows of predicted KxK kernels <-> the flat buffer of all predicted conv weights.

``rows_to_flat`` writes row d (destination order, see nernfast.plan) into its layer's slot, taking
the centre k_l x k_l of the KxK prediction; ``flat_to_rows`` is its adjoint (gradients of the flat
buffer -> gradients of the rows, zero outside the crop). Uniform (all-KxK) plans need no copy.
"""
from __future__ import annotations

import torch

from ..plan import WeightPlan


def centre_crop(x: torch.Tensor, k_full: int, k: int) -> torch.Tensor:
    """(..., k_full*k_full) -> (..., k, k), the centre window."""
    lo = (k_full - k) // 2
    return x.unflatten(-1, (k_full, k_full))[..., lo:lo + k, lo:lo + k]


def rows_to_flat_reference(rows: torch.Tensor, plan: WeightPlan) -> torch.Tensor:
    """Per-layer loop: slice, crop, flatten, concatenate. Differentiable."""
    K = plan.kernel_size
    parts = [centre_crop(rows[plan.row_offsets[i]:plan.row_offsets[i + 1]], K, l.shape[2]).reshape(-1)
             for i, l in enumerate(plan.layers)]
    return torch.cat(parts)


def flat_to_rows_reference(flat: torch.Tensor, plan: WeightPlan) -> torch.Tensor:
    """Adjoint of ``rows_to_flat_reference``: (numel,) -> (N, K*K), zeros outside each crop."""
    K = plan.kernel_size
    out = flat.new_zeros(plan.num_rows, K * K)
    for i, l in enumerate(plan.layers):
        k = l.shape[2]
        seg = flat[plan.buf_offsets[i]:plan.buf_offsets[i + 1]].view(l.rows, k, k)
        centre_crop(out[plan.row_offsets[i]:plan.row_offsets[i + 1]], K, k).copy_(seg)
    return out


def rows_to_flat(rows: torch.Tensor, plan: WeightPlan) -> torch.Tensor:
    """Differentiable rows -> flat buffer (zero-copy view for uniform plans)."""
    if plan.uniform:
        return rows.reshape(-1)
    return rows_to_flat_reference(rows, plan)


def flat_views(flat: torch.Tensor, plan: WeightPlan) -> list[torch.Tensor]:
    """The per-layer conv weights as views into the flat buffer."""
    return [flat[plan.buf_offsets[i]:plan.buf_offsets[i + 1]].view(l.shape) for i, l in enumerate(plan.layers)]

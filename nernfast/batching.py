"""Weight mini-batches: which predicted rows carry gradient in a step (NeRN's weights_batch_method).

- ``all``: every row.
- ``random_batch``: a uniform random subset of ``batch_size`` rows (without replacement).
- ``random_weighted_batch``: with probability 0.8 as ``random_batch``; otherwise ``batch_size`` rows
  drawn *with replacement* with probability proportional to the original kernel's L2 norm.
  A row drawn twice gets twice its gradient, as in the reference (see ``with_subset_gradient``).
Every step still predicts all rows; the others are computed without autograd.
"""
from __future__ import annotations

import torch

BATCH_METHODS = ("all", "random_batch", "random_weighted_batch")


def sample_rows(method: str, num_rows: int, batch_size: int, generator: torch.Generator,
                norms: torch.Tensor | None = None) -> torch.Tensor | None:
    """Row indices carrying gradient (CPU int64), or None for every row."""
    if method == "all" or batch_size >= num_rows and method == "random_batch":
        return None
    if method == "random_batch" or (method == "random_weighted_batch"
                                    and torch.rand((), generator=generator).item() < 0.8):
        return torch.randperm(num_rows, generator=generator)[:batch_size]
    if method == "random_weighted_batch":
        if norms is None:
            raise ValueError("random_weighted_batch needs the original kernels' norms")
        p = norms.double().cpu()
        if p.sum() <= 0:  # all-zero model (fully pruned): fall back to uniform
            p = torch.ones_like(p)
        return torch.multinomial(p, batch_size, replacement=True, generator=generator)
    raise ValueError(f"unknown weights batch method {method!r}; choose one of {BATCH_METHODS}")


def with_subset_gradient(full: torch.Tensor, idx: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
    """Rows equal to ``full`` (computed without grad) whose gradient flows into ``subset`` at ``idx``.

    Adding ``subset - subset.detach()`` leaves the values unchanged and sends each row's gradient to
    every draw of it, so duplicates count once per draw.
    """
    return full.index_add(0, idx.to(full.device), subset - subset.detach())

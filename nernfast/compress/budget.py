"""Fit an entropy-coded artefact to a byte budget: the finest steps whose whole file fits.

``--max-bytes N`` scales every step of an ``ans`` scheme (the shared step, or each per-layer step,
keeping their ratios) by one factor ``f`` and finds the smallest ``f`` whose file -- every part,
header and checksum included, as ``nernfast.artefact.artefact_bytes`` encodes it -- is at most N
bytes. The file's size falls as the steps grow (fewer levels, shorter ANS words) but not strictly (a
histogram's words move by a few bytes), so the search bisects on ``log f`` and checks the bound on
the factor it returns, never on an interpolation.

The compress CLI fits twice: before the quantisation-aware fine-tune (on the fp32 weights, with a
small margin for the metadata the run adds) and on the written form after it, only ever coarser
there, since the fine-tune learned the first fit's grid.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

from ..codec.format2 import MAX_REL_STEP, Scheme

FINEST = 1 / 64   # the smallest factor tried: a budget this loose is met at 64x finer steps
ITERATIONS = 16   # bisection on log f: the factor to ~0.05 % of the range's log width


class BudgetError(ValueError):
    pass


def scaled(scheme: Scheme, factor: float) -> Scheme:
    """``scheme`` with every ans step multiplied by ``factor``."""
    return replace(scheme, step=scheme.step * factor, layer_steps=tuple(s * factor for s in scheme.layer_steps))


def fit_steps(size_of: Callable[[Scheme], int], scheme: Scheme, max_bytes: int,
              lowest: float = FINEST) -> tuple[float, int]:
    """(factor, bytes): the smallest factor >= ``lowest`` found whose scaled ``scheme`` makes
    ``size_of`` at most ``max_bytes``. BudgetError when even the coarsest steps do not fit."""
    if scheme.weights != "ans":
        raise BudgetError("a byte budget sizes the entropy-coded steps; pass --step REL with --max-bytes")
    if max_bytes <= 0:
        raise BudgetError(f"--max-bytes {max_bytes}: must be a positive number of bytes")
    highest = MAX_REL_STEP / max((scheme.step, *scheme.layer_steps))
    if lowest > highest:
        raise BudgetError(f"the steps cannot grow {lowest:g}x (each stays <= {MAX_REL_STEP:g} times its matrix's RMS)")
    top = size_of(scaled(scheme, highest))
    if top > max_bytes:
        raise BudgetError(f"--max-bytes {max_bytes:,}: the file needs {top:,} bytes even at the coarsest steps "
                          "(permutation, BN/FC and metadata are not scaled); allow more bytes or a smaller predictor")
    bottom = size_of(scaled(scheme, lowest))
    if bottom <= max_bytes:
        return lowest, bottom
    lo, hi, fit = math.log(lowest), math.log(highest), (highest, top)  # size(lo) > max_bytes >= size(hi)
    for _ in range(ITERATIONS):
        mid = (lo + hi) / 2
        n = size_of(scaled(scheme, math.exp(mid)))
        if n <= max_bytes:
            hi, fit = mid, (math.exp(mid), n)
        else:
            lo = mid
    return fit

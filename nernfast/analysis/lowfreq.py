"""Low-frequency energy ratio of weights (paper §3.1, Fig. 2 and App. E, Fig. 8).

A layer's weight W (c_out, c_in, k, k) is reshaped to (c_out, c_in·k·k); with its singular values
σ_1 ≥ ... ≥ σ_n (n = min of the two dimensions),

    ratio(W) = Σ_{i ≤ ⌊n/2⌋} σ_i² / Σ_i σ_i²,

the share of the energy (squared Frobenius norm) in the first half of the spectrum. A rank-1
matrix has ratio 1 (for n ≥ 2); a matrix with n equal singular values has ratio ⌊n/2⌋ / n. The
paper plots ratio(W_recon) − ratio(W_orig) per layer: positive = the reconstruction is smoother
("implicit rank reduction"). SVDs are computed in float64.
"""
from __future__ import annotations

from typing import Mapping

import torch


def lowfreq_ratio(w: torch.Tensor) -> float:
    """The low-frequency energy ratio of one weight tensor (any shape with at least 2 dims)."""
    if w.dim() < 2:
        raise ValueError(f"lowfreq_ratio needs a matrix or a conv weight, got shape {tuple(w.shape)}")
    m = w.detach().reshape(w.shape[0], -1).double().cpu()
    s = torch.linalg.svdvals(m)
    e = s.pow(2)
    total = float(e.sum())
    if total == 0.0:
        return float("nan")
    half = len(s) // 2
    if half == 0:  # a single singular value: all the energy is in "the first half"
        return 1.0
    return float(e[:half].sum()) / total


def layer_ratios(weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {n: lowfreq_ratio(w) for n, w in weights.items()}


def ratio_differences(recon: Mapping[str, torch.Tensor], original: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per layer ratio(recon) − ratio(original), in the original's layer order."""
    return {n: lowfreq_ratio(recon[n]) - lowfreq_ratio(w) for n, w in original.items()}


def summarize(diffs: Mapping[str, float]) -> dict[str, float]:
    """Mean difference over all layers and over the first / middle / last third of the layers
    (the paper sees the largest increase in the later layers)."""
    v = list(diffs.values())
    n = len(v)
    if n == 0:
        return {}
    thirds = [v[: n // 3], v[n // 3: 2 * n // 3], v[2 * n // 3:]]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"mean": mean(v), "first_third": mean(thirds[0]), "middle_third": mean(thirds[1]),
            "last_third": mean(thirds[2]), "positive_layers": sum(1 for x in v if x > 0), "layers": n}

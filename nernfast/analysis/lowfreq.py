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

import functools
import math
from typing import Any, Mapping, Sequence

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


def random_ratio(shape: Sequence[int], draws: int = 4, seed: int = 0) -> float:
    """The ratio an i.i.d. Gaussian weight of ``shape`` has (mean of ``draws`` samples): what a freshly
    initialised layer shows (Kaiming init draws its entries i.i.d.); it depends on the shape alone."""
    return _random_ratio(shape[0], math.prod(shape[1:]), draws, seed)


@functools.lru_cache(maxsize=256)  # a network repeats a few shapes; large ones cost a float64 SVD per draw
def _random_ratio(rows: int, cols: int, draws: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    return sum(lowfreq_ratio(torch.randn(rows, cols, generator=g, dtype=torch.float64)) for _ in range(draws)) / draws


# A trained network's spectrum rises above a fresh init's (Marchenko-Pastur) as its weights learn structure. Measured
# (docs/fashion-mnist-tuning.md, "What limits the plain original", "Session 17"): a fresh ResNet-20 0.00, the plain
# (sgd) Fashion-MNIST original 0.01 (its conv weights still 91 % of their init's energy; decoupled misses by 1.8 pt),
# the digits originals 0.03, the plain-adamw original 0.052 (58 %; decoupled within 0.5 pt), the shipped
# Fashion-MNIST original 0.18 (12 %).
NEAR_RANDOM_EXCESS = 0.05


def spectrum_check(weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """How far ``weights`` (e.g. the original's predicted conv weights) are from random: each layer's ratio, the
    ratio of a random matrix of its shape, and the mean excess over layers. Near-random weights are mostly
    their initialisation, noise no predictor smaller than the network can reconstruct."""
    if not weights:
        raise ValueError("spectrum_check needs at least one weight")
    ratios = layer_ratios(weights)
    reference = {n: random_ratio(tuple(w.shape)) for n, w in weights.items()}
    excess = sum(ratios[n] - reference[n] for n in weights) / len(weights)
    return {"layers": len(weights), "mean_ratio": sum(ratios.values()) / len(ratios),
            "mean_random_ratio": sum(reference.values()) / len(reference), "excess": excess,
            "near_random": excess < NEAR_RANDOM_EXCESS,
            "rule": f"mean low-frequency ratio excess over random matrices of the same shapes < {NEAR_RANDOM_EXCESS}"}


def spectrum_warning(check: dict[str, Any], what: str = "the original") -> str | None:
    """A one-line warning when ``check`` (spectrum_check) found near-random weights, else None."""
    if not check["near_random"]:
        return None
    return (f"warning: {what}'s conv weights are close to their random initialisation (low-frequency energy ratio "
            f"{check['mean_ratio']:.3f}, random matrices of the same shapes {check['mean_random_ratio']:.3f}): a "
            f"predictor smaller than the network cannot reconstruct that noise, so expect a large phase-1 error and "
            f"a phase 2 that mostly retrains (a longer-trained original, with weight decay, compresses better)")


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

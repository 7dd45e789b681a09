"""Per-layer weight distance of several checkpoints to the original (paper Fig. 4(b)).

For each predicted conv layer: ‖W_l − Ŵ_l‖ / ‖W_l‖ (relative Frobenius distance, W the original),
and NeRN's overall reconstruction error sqrt(Σ‖W − Ŵ‖² / #weights).
"""
from __future__ import annotations

from typing import Mapping

import torch

from .weights import recon_l2, relative_l2


def layer_distances(candidates: Mapping[str, Mapping[str, torch.Tensor]],
                    original: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """``{label: {layer: relative distance}}`` in the original's layer order."""
    return {label: relative_l2(w, original) for label, w in candidates.items()}


def overall(candidates: Mapping[str, Mapping[str, torch.Tensor]], original: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {label: recon_l2(w, original) for label, w in candidates.items()}

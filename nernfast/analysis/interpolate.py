"""Interpolation between the original and a reconstruction (paper App. F, Fig. 9).

    W(a) = (1 − a)·W_orig + a·W_recon,  a ∈ [0, 1]

applied to every floating-point entry of the state dict (for NeRN artefacts only the predicted
convs differ: BN and FC are the original's), so W(0) is exactly the original and W(1) exactly the
reconstruction. Along a: test accuracy and loss, and NeRN's reconstruction error of the predicted
layers, sqrt(Σ‖W(a) − W_orig‖² / #weights) (= a times the reconstruction's error).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from .weights import recon_l2


def blend_state(a_state: Mapping[str, torch.Tensor], b_state: Mapping[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """(1 − alpha)·a + alpha·b for floating tensors; other entries (e.g. BN step counters) from a
    when alpha < 1 and from b at alpha = 1."""
    out = {}
    for k, va in a_state.items():
        vb = b_state[k]
        if va.is_floating_point():
            if alpha == 0.0:
                out[k] = va.clone()
            elif alpha == 1.0:
                out[k] = vb.clone()
            else:
                out[k] = torch.lerp(va, vb.to(va.dtype), alpha)
        else:
            out[k] = (vb if alpha == 1.0 else va).clone()
    return out


def interpolate(original: nn.Module, recon: nn.Module, layers: Sequence[str], alphas: Sequence[float],
                evaluate: Any) -> list[dict[str, float]]:
    """For each alpha: ``evaluate(model) -> (accuracy, loss)`` of W(alpha) and the reconstruction
    error of ``layers`` to the original. Neither input model is modified."""
    a_state, b_state = original.state_dict(), recon.state_dict()
    missing = [k for k in a_state if k not in b_state]
    if missing:
        raise ValueError(f"the two models differ in their state entries ({missing[:5]}); "
                         "interpolate checkpoints of one architecture")
    work = copy.deepcopy(original).eval()
    mods = dict(original.named_modules())
    w0 = {n: mods[n].weight.detach().double() for n in layers}
    rows = []
    for alpha in alphas:
        work.load_state_dict(blend_state(a_state, b_state, float(alpha)))
        wm = dict(work.named_modules())
        err = recon_l2({n: wm[n].weight.detach().double() for n in layers}, w0)
        acc, loss = evaluate(work)
        rows.append({"alpha": float(alpha), "accuracy": float(acc), "loss": float(loss), "recon_l2": err})
    return rows


def alphas_grid(n: int) -> list[float]:
    """n evenly spaced values from 0 to 1 (both included)."""
    if n < 2:
        raise ValueError(f"need at least 2 interpolation points, got {n}")
    return [i / (n - 1) for i in range(n)]


def loader_evaluator(loader_fn: Any, device: str | torch.device = "cpu", max_batches: int | None = None):
    """``evaluate(model) -> (accuracy, mean cross-entropy)`` over a fresh loader each call."""
    from ..eval import accuracy

    def evaluate(model: nn.Module) -> tuple[float, float]:
        return accuracy(model, loader_fn(), device, max_batches)
    return evaluate


